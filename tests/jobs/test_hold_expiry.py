"""Holds expire at their expires_at by a real `wallet worker` (issue 12): the money a hold
still reserves is released exactly once, whatever happens to the workers (killed mid-expiry,
a job lost), and a capture or void racing the expiry job ends in one outcome.

wallet.place_hold enqueues the expiry job ('wallet:expire_hold', queue 'holds') for the
hold's expires_at in the transaction that places it; the worker's expire_hold task calls
wallet.expire_hold. Each test runs on a database of its own with its own worker processes
(tests/conftest.py); killed workers are told WALLET_STALLED_WORKER_SECONDS=3, as in
test_worker_crashes.py. The races are serialised in SQL (tests/sql has them without a
worker); here one of each kind runs end to end. A job run early ('not_due') is retried a
second later until the hold is due (jobs/tasks.py says why), with the reconciler behind it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import procrastinate
import psycopg
import pytest

from core.database import with_database
from core.settings import load_settings
from jobs.app import create_app, worker_queues
from jobs.tasks import HoldNotDue, build_tasks
from tests.support.ledger import funded_wallet, get_wallet, rows, scalar
from tests.support.processes import service_environment

# Far enough ahead that the checks made before the expiry finish first, near enough to
# keep the tests fast.
LEAD = timedelta(seconds=3)
EXPIRE_SECONDS = 20
STALLED = {"WALLET_STALLED_WORKER_SECONDS": "3"}
# Stalled at 3 s, retried at the next 10 s tick of retry_stalled_jobs; generous.
RECOVERY_SECONDS = 60
# The reconciler runs every 15 s and waits WALLET_RECONCILE_GRACE_SECONDS (1 s in the tests).
PERIODIC_SECONDS = 45
HOLDS = 200
WALLETS = 100
FUNDS = 1_000_000
EXPIRE_TASK = "wallet:expire_hold"


def db_now(db: psycopg.Connection) -> datetime:
    return scalar(db, "SELECT now()")


def violations(db: psycopg.Connection) -> list[dict[str, Any]]:
    return rows(db, "SELECT check_name, detail FROM wallet.verify_ledger()")


def place_hold(db: psycopg.Connection, wallet_id: Any, amount: int, expires_at: datetime) -> dict[str, Any]:
    [hold] = rows(
        db,
        "SELECT * FROM wallet.place_hold('svc', NULL, NULL, NULL, %s::uuid, %s::bigint, %s::timestamptz,"
        " NULL::text, NULL::jsonb)",
        wallet_id,
        amount,
        expires_at,
    )
    return hold


def hold_of(db: psycopg.Connection, hold_id: Any) -> dict[str, Any]:
    [hold] = rows(db, "SELECT * FROM wallet.holds WHERE id = %s", hold_id)
    return hold


def count_holds(db: psycopg.Connection, status: str) -> int:
    return scalar(db, "SELECT count(*) FROM wallet.holds WHERE status = %s", status)


def expire_jobs(db: psycopg.Connection, hold_id: Any) -> list[dict[str, Any]]:
    return rows(
        db,
        "SELECT id, status::text, attempts, queue_name, scheduled_at FROM procrastinate.procrastinate_jobs"
        " WHERE task_name = %s AND args ->> 'hold_id' = %s ORDER BY id",
        EXPIRE_TASK,
        str(hold_id),
    )


def finished_expire_jobs(workers, db: psycopg.Connection, hold_id: Any) -> list[dict[str, Any]]:
    """The hold's expiry jobs once none is waiting or running: a worker marks its job done in
    a transaction of its own, just after the expiry's commits."""
    return workers.wait_until(
        lambda: (
            jobs
            if (jobs := expire_jobs(db, hold_id))
            and all(job["status"] not in ("todo", "doing") for job in jobs)
            else None
        ),
        timeout=EXPIRE_SECONDS,
        what="the expiry job marked finished",
    )


def money_of(db: psycopg.Connection, wallet_id: Any) -> tuple[int, int, int]:
    """(balance, held, available): available as wallet.get_wallet reports it."""
    [wallet] = rows(db, "SELECT balance, held FROM wallet.wallets WHERE id = %s", wallet_id)
    return wallet["balance"], wallet["held"], get_wallet(db, wallet_id)["available"]


def assert_expired_once(db: psycopg.Connection, hold_ids: list[Any]) -> None:
    """Every hold expired, at or after its expires_at, with nothing left reserved; each
    wallet's held is the sum of its active holds and its balance untouched (an expiry moves
    no money); the ledger checks pass."""
    holds = rows(db, "SELECT * FROM wallet.holds WHERE id = ANY(%s)", hold_ids)
    assert len(holds) == len(hold_ids)
    wrong = [
        hold
        for hold in holds
        if hold["status"] != "expired" or hold["closed_at"] is None or hold["closed_at"] < hold["expires_at"]
    ]
    assert wrong == [], f"{len(wrong)} holds not expired at their time, e.g. {wrong[:3]}"
    mismatched = rows(
        db,
        "SELECT w.id, w.held FROM wallet.wallets AS w LEFT JOIN wallet.holds AS h ON h.wallet_id = w.id"
        " GROUP BY w.id, w.held"
        " HAVING w.held <> coalesce(sum(h.remaining) FILTER (WHERE h.status = 'active'), 0)",
    )
    assert mismatched == []
    assert violations(db) == []


def test_holds_expire_at_expires_at_and_release_their_money_exactly_once(db, database_url, workers):
    wallet_id = funded_wallet(db, 10_000)
    workers.start()
    expires_at = db_now(db) + LEAD
    first = place_hold(db, wallet_id, 2_000, expires_at)
    second = place_hold(db, wallet_id, 3_000, expires_at + timedelta(milliseconds=500))
    later = place_hold(db, wallet_id, 1_000, expires_at + timedelta(hours=1))
    assert money_of(db, wallet_id) == (10_000, 6_000, 4_000)
    assert [job["queue_name"] for job in expire_jobs(db, first["id"])] == ["holds"]
    assert expire_jobs(db, first["id"])[0]["scheduled_at"] == expires_at

    workers.wait_until(
        lambda: count_holds(db, "expired") == 2, timeout=EXPIRE_SECONDS, what="the two due holds expired"
    )

    assert money_of(db, wallet_id) == (10_000, 1_000, 9_000)
    for hold in (first, second):
        [job] = finished_expire_jobs(workers, db, hold["id"])
        assert (job["status"], job["attempts"]) == ("succeeded", 1)
        expired = hold_of(db, hold["id"])
        assert expired["status"] == "expired" and expired["closed_at"] >= expired["expires_at"]
        # Soon after its time (a worker polling every 50 ms; slack for a busy machine).
        assert expired["closed_at"] - expired["expires_at"] < timedelta(seconds=2)
    assert hold_of(db, later["id"])["status"] == "active"
    # The released money is available: a withdrawal of all of it goes through.
    db.execute(
        "SELECT wallet.withdraw('svc', NULL, NULL, NULL, %s::uuid, 9000::bigint, NULL, NULL)", (wallet_id,)
    )
    assert money_of(db, wallet_id) == (1_000, 1_000, 0)
    # A second delivery changes nothing.
    assert scalar(db, "SELECT wallet.expire_hold(%s::uuid)", first["id"]) == "expired"
    assert money_of(db, wallet_id) == (1_000, 1_000, 0)
    assert assert_no_violations(db)
    assert "hold " + str(first["id"]) + ": expired" in workers.log_tails(lines=200)

    # `wallet stats`: the settlement figures where they always were, the holds' beside them.
    stats = wallet_stats(database_url)
    assert {"settled", "overdue", "queue_depth", "lag_p99_ms"} <= stats.keys()
    holds = stats["holds"]
    # The later hold expires within the hour.
    assert [holds[name] for name in ("active", "held_total", "expiring_soon", "overdue")] == [1, 1_000, 1, 0]
    assert (holds["expired"], holds["queue_depth"]) == (2, 1)
    assert 0 <= holds["expiry_lag_p50_ms"] <= holds["expiry_lag_p99_ms"] <= holds["expiry_lag_max_ms"] < 2000


def wallet_stats(database_url: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "cli", "stats", "--minutes", "5"],
        env=service_environment(database_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


def assert_no_violations(db: psycopg.Connection) -> bool:
    assert violations(db) == []
    return True


def place_many(db: psycopg.Connection) -> tuple[list[Any], list[Any]]:
    """HOLDS holds over WALLETS funded wallets, all expiring at once, LEAD from now; the hold
    ids and the wallet ids. Two statements, so a busy machine cannot make placing outlast LEAD."""
    wallet_ids = [
        row[0]
        for row in db.execute(
            "SELECT (wallet.open_wallet('svc', NULL, NULL, 'merchant-' || n)).id"
            " FROM generate_series(1, %s) AS n",
            (WALLETS,),
        ).fetchall()
    ]
    db.execute(
        "SELECT wallet.deposit('svc', NULL, NULL, NULL, id, %s::bigint, NULL, NULL)"
        " FROM unnest(%s::uuid[]) AS id",
        (FUNDS, wallet_ids),
    )
    expires_at = db_now(db) + LEAD
    targets = [wallet_ids[number % WALLETS] for number in range(HOLDS)]
    placed = db.execute(
        """
        SELECT hold.id, hold.status
        FROM unnest(%s::uuid[], %s::bigint[]) WITH ORDINALITY AS request (wallet_id, amount, position),
             LATERAL wallet.place_hold('svc', NULL, NULL, NULL, request.wallet_id, request.amount,
                                       %s::timestamptz, NULL::text, NULL::jsonb) AS hold
        ORDER BY request.position
        """,
        (targets, [1_000 + number for number in range(HOLDS)], expires_at),
    ).fetchall()
    assert [status for _, status in placed] == ["active"] * HOLDS
    assert db_now(db) < expires_at, "placing took too long for this test to mean anything"
    return [hold_id for hold_id, _ in placed], wallet_ids


def test_sigkill_mid_expiry_then_restart_expires_each_hold_exactly_once(db, workers):
    worker = workers.start(**STALLED)
    hold_ids, wallet_ids = place_many(db)

    workers.wait_until(
        lambda: count_holds(db, "expired") > 0,
        timeout=EXPIRE_SECONDS,
        what="first hold expired",
        interval=0.005,
    )
    worker.kill()
    killed_at = time.monotonic()
    expired_at_kill = count_holds(db, "expired")
    left_doing = scalar(
        db,
        "SELECT count(*) FROM procrastinate.procrastinate_jobs WHERE task_name = %s AND status = 'doing'",
        EXPIRE_TASK,
    )
    assert 0 < expired_at_kill < HOLDS, f"the kill did not land mid-expiry: {expired_at_kill} expired"

    workers.restart(worker)
    workers.wait_until(
        lambda: count_holds(db, "active") == 0,
        timeout=RECOVERY_SECONDS,
        what="every hold expired after the kill",
    )
    expired_after = time.monotonic() - killed_at
    # The jobs the killed worker left 'doing' run again once it is seen dead (their hold may
    # have expired already: killed between the expiry's commit and the job's): none is lost.
    workers.wait_until(
        lambda: (
            scalar(
                db,
                "SELECT count(*) FROM procrastinate.procrastinate_jobs"
                " WHERE task_name = %s AND status IN ('todo', 'doing')",
                EXPIRE_TASK,
            )
            == 0
        ),
        timeout=RECOVERY_SECONDS,
        what="every expiry job finished, the killed worker's too",
    )
    print(
        f"SIGKILL with {expired_at_kill}/{HOLDS} expired and {left_doing} expiry jobs left 'doing':"
        f" all expired {expired_after:.1f} s after the kill, every job finished"
        f" {time.monotonic() - killed_at:.1f} s after it"
    )
    assert_expired_once(db, hold_ids)
    for wallet_id in wallet_ids:
        assert money_of(db, wallet_id) == (FUNDS, 0, FUNDS)


def test_a_deleted_expiry_job_is_replaced_by_the_reconciler(db, workers):
    wallet_id = funded_wallet(db, 10_000)
    workers.start()
    hold = place_hold(db, wallet_id, 4_000, db_now(db) + LEAD)
    # procrastinate's delete trigger names its tables unqualified: search its schema, as the worker does.
    db.execute("SET search_path = procrastinate")
    deleted = db.execute(
        "DELETE FROM procrastinate.procrastinate_jobs WHERE queueing_lock = %s RETURNING id",
        (f"expire-hold:{hold['id']}",),
    ).fetchall()
    assert len(deleted) == 1

    workers.wait_until(
        lambda: hold_of(db, hold["id"])["status"] == "expired",
        timeout=PERIODIC_SECONDS,
        what="hold without a job expired by the reconciler's",
    )

    [job] = finished_expire_jobs(workers, db, hold["id"])
    assert job["id"] > deleted[0][0] and job["status"] == "succeeded"
    assert money_of(db, wallet_id) == (10_000, 0, 10_000)
    assert violations(db) == []
    assert "reconciler re-enqueued the expiry of 1 holds" in workers.log_tails(lines=200)


def worker_waiting_on_a_lock(db: psycopg.Connection) -> bool:
    """Whether the worker's session running wallet.expire_hold waits for a lock."""
    return (
        scalar(
            db,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE %s",
            "%wallet.expire_hold%",
        )
        > 0
    )


def capture_all(connection: psycopg.Connection, hold_id: Any) -> None:
    connection.execute(
        "SELECT * FROM wallet.capture_hold('svc', NULL, NULL, NULL, %s::uuid, NULL::bigint,"
        " NULL::uuid, true)",
        (hold_id,),
    )


def void(connection: psycopg.Connection, hold_id: Any) -> None:
    connection.execute("SELECT * FROM wallet.void_hold('svc', NULL, NULL, NULL, %s::uuid)", (hold_id,))


@pytest.mark.parametrize("action", ["capture", "void"])
def test_a_capture_or_void_holding_the_hold_when_it_expires_wins_and_the_expiry_job_leaves_it(
    db, database_url, workers, action
):
    """A capture (or void) has locked the hold when its expiry job starts: the job waits for
    the lock, then finds the hold captured (voided) and changes nothing. The money moves once."""
    wallet_id = funded_wallet(db, 10_000)
    workers.start()
    hold = place_hold(db, wallet_id, 4_000, db_now(db) + LEAD)
    with psycopg.connect(database_url) as racer:  # one transaction, committed below
        # The capture's (void's) first step, taken before the job is due. The rest of it, below,
        # runs once the job has started: a capture or void that closes a hold deletes its job
        # while the job still waits in the queue, so it races only a job already running.
        racer.execute("SELECT FROM wallet.holds WHERE id = %s FOR UPDATE", (hold["id"],))
        workers.wait_until(
            lambda: worker_waiting_on_a_lock(db),
            timeout=EXPIRE_SECONDS,
            what="the expiry job waiting for the hold",
        )
        (capture_all if action == "capture" else void)(racer, hold["id"])
        racer.commit()

    [job] = finished_expire_jobs(workers, db, hold["id"])
    assert (job["status"], job["attempts"]) == ("succeeded", 1)
    outcome = "captured" if action == "capture" else "voided"
    final = hold_of(db, hold["id"])
    assert final["status"] == outcome and final["remaining"] == 0
    assert f"hold {hold['id']}: {outcome}" in workers.log_tails(lines=200)
    balance = 10_000 - 4_000 if action == "capture" else 10_000
    assert money_of(db, wallet_id) == (balance, 0, balance)
    assert violations(db) == []


def test_a_capture_after_the_expiry_job_took_the_hold_is_refused(db, database_url, workers):
    """The expiry job has locked the hold (and waits for its wallet, which this test holds):
    a capture arriving then waits for the hold, and finds it expired."""
    wallet_id = funded_wallet(db, 10_000)
    workers.start()
    hold = place_hold(db, wallet_id, 4_000, db_now(db) + LEAD)
    with (
        psycopg.connect(database_url) as wallet_lock,
        psycopg.connect(database_url, autocommit=True) as racer,
    ):
        wallet_lock.execute("SELECT FROM wallet.wallets WHERE id = %s FOR UPDATE", (wallet_id,))
        workers.wait_until(
            lambda: worker_waiting_on_a_lock(db),
            timeout=EXPIRE_SECONDS,
            what="the expiry job waiting for the wallet",
        )
        capture_error: list[BaseException] = []

        def capture() -> None:
            try:
                capture_all(racer, hold["id"])
            except psycopg.Error as error:
                capture_error.append(error)

        capturing = threading.Thread(target=capture)
        capturing.start()
        workers.wait_until(
            lambda: scalar(
                db,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE %s",
                "%wallet.capture_hold%",
            ),
            timeout=EXPIRE_SECONDS,
            what="the capture waiting for the hold",
        )
        wallet_lock.rollback()
        capturing.join(timeout=EXPIRE_SECONDS)

    assert [error.sqlstate for error in capture_error] == ["WH409"]
    [job] = finished_expire_jobs(workers, db, hold["id"])
    assert (job["status"], job["attempts"]) == ("succeeded", 1)
    assert hold_of(db, hold["id"])["status"] == "expired"
    assert money_of(db, wallet_id) == (10_000, 0, 10_000)
    assert violations(db) == []


def test_an_expiry_job_that_runs_early_is_retried_until_the_hold_is_due(db, workers):
    """A job run before its hold's expires_at (clock skew, one enqueued by hand) finds it
    'not_due' and is retried a second later, until the hold expires: the expiry is not lost."""
    wallet_id = funded_wallet(db, 10_000)
    hold = place_hold(db, wallet_id, 4_000, db_now(db) + LEAD)
    # The hold's own job is replaced by one due now, as a skewed clock would have it run.
    db.execute("SET search_path = procrastinate")
    db.execute(
        "DELETE FROM procrastinate.procrastinate_jobs WHERE queueing_lock = %s",
        (f"expire-hold:{hold['id']}",),
    )
    db.execute("RESET search_path")
    db.execute("SELECT wallet.enqueue_hold_expiry(%s::uuid, now())", (hold["id"],))
    workers.start()

    workers.wait_until(
        lambda: hold_of(db, hold["id"])["status"] == "expired",
        timeout=EXPIRE_SECONDS,
        what="the hold expired",
    )

    [job] = finished_expire_jobs(workers, db, hold["id"])
    assert job["status"] == "succeeded" and job["attempts"] >= 2, job
    expired = hold_of(db, hold["id"])
    # Retried every second: expired within about a second of its time, not the reconciler's 15 s.
    assert timedelta(0) <= expired["closed_at"] - expired["expires_at"] < timedelta(seconds=3)
    assert f"hold {hold['id']}: not due yet (attempt 1); retrying" in workers.log_tails(lines=400)
    assert money_of(db, wallet_id) == (10_000, 0, 10_000)
    assert violations(db) == []


def test_a_wallet_worker_login_expires_holds_and_reconciles(db, database_url, logins, workers):
    """The worker needs nothing but wallet_app (sql/bootstrap/roles.sql's wallet_worker) to
    expire a hold and to run the hold reconciler."""
    wallet_id = funded_wallet(db, 10_000)
    hold = place_hold(db, wallet_id, 4_000, db_now(db) + LEAD)
    worker_url = with_database(logins["wallet_worker"], urlsplit(database_url).path.lstrip("/"))
    workers.start(DATABASE_URL=worker_url)

    [job] = finished_expire_jobs(workers, db, hold["id"])

    assert (job["status"], job["attempts"]) == ("succeeded", 1)
    assert hold_of(db, hold["id"])["status"] == "expired"
    assert money_of(db, wallet_id) == (10_000, 0, 10_000)
    workers.wait_until(
        lambda: scalar(
            db,
            "SELECT count(*) FROM procrastinate.procrastinate_jobs"
            " WHERE task_name = 'wallet:reconcile_hold_expiries' AND status = 'succeeded'",
        ),
        timeout=PERIODIC_SECONDS,
        what="a reconcile_hold_expiries job succeeded",
    )
    assert "wallet_worker" in {
        row["usename"]
        for row in rows(db, "SELECT usename FROM pg_stat_activity WHERE datname = current_database()")
    }


# -- the retry strategy and the worker's queues, without a worker ---------------------------


def expiry_retry_decision(exception: BaseException, attempts: int) -> Any:
    settings = load_settings({"WALLET_SETTLE_MAX_RETRIES": "3", "WALLET_SETTLE_RETRY_BASE_SECONDS": "2"})
    task = build_tasks(settings).tasks["expire_hold"]
    job = procrastinate.jobs.Job(
        id=1,
        queue="holds",
        lock=None,
        queueing_lock=None,
        task_name=EXPIRE_TASK,
        attempts=attempts,
        task_kwargs={"hold_id": "x"},
    )
    return task.retry_strategy.get_retry_decision(exception=exception, job=job)


def seconds_until(decision: Any) -> float:
    return (decision.retry_at - datetime.now(UTC)).total_seconds()


def test_the_expiry_retry_strategy():
    # Early: a second later, until the attempts are spent (then the reconciler).
    assert 0 < seconds_until(expiry_retry_decision(HoldNotDue("x"), attempts=0)) <= 1
    assert 0 < seconds_until(expiry_retry_decision(HoldNotDue("x"), attempts=2)) <= 1
    assert expiry_retry_decision(HoldNotDue("x"), attempts=3) is None
    # Transient errors: as settlements, base^(attempts + 1) seconds.
    assert 1 < seconds_until(expiry_retry_decision(ConnectionError(), attempts=0)) <= 2
    assert 7 < seconds_until(expiry_retry_decision(ConnectionError(), attempts=2)) <= 8
    assert expiry_retry_decision(ConnectionError(), attempts=3) is None
    # A hold that does not exist never will.
    missing = asyncpg.PostgresError()
    missing.sqlstate = "WN404"
    assert expiry_retry_decision(missing, attempts=0) is None


def test_the_worker_fetches_from_the_queues_of_its_tasks_holds_included():
    app = create_app(load_settings({}), "postgresql://localhost/unused", concurrency=1)
    assert worker_queues(app) == ["deposits", "holds", "maintenance"]
    assert app.tasks[EXPIRE_TASK].queue == "holds"
