"""Settlement is exactly once whatever happens to the workers (SPEC 5): killed in the
middle of settling, two at once, a job lost, a graceful stop, and the periodic tasks that
clean up after crashes keep firing.

Recovery from SIGKILL waits for stall detection: the killed worker's running jobs stay
'doing' until its heartbeat is WALLET_STALLED_WORKER_SECONDS old (30 s by default) and
retry_stalled_jobs, every 10 s, runs them again. The workers these tests kill are told 3 s
(they then beat every second, a third of it, so a live one never looks dead): recovery takes
up to about 13 s, not 40.
"""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.support.ledger import get_wallet, new_wallet, rows, scalar

LEAD = timedelta(seconds=3)
SETTLE_SECONDS = 20
# For the workers a test kills (see above).
STALLED = {"WALLET_STALLED_WORKER_SECONDS": "3"}
# A heartbeat up to 1 s old when killed, stalled at 3 s, retried at the next 10 s tick;
# generous, for a busy machine.
RECOVERY_SECONDS = 60
# Periodic jobs: every 15 s (reconcile) and 10 s (stalled), plus a worker start.
PERIODIC_SECONDS = 45
DEPOSITS = 200
WALLETS = 100
SETTLE_TASK = "wallet:settle_deposit"


def db_now(db: psycopg.Connection) -> datetime:
    return scalar(db, "SELECT now()")


def violations(db: psycopg.Connection) -> list[dict[str, Any]]:
    return rows(db, "SELECT check_name, detail FROM wallet.verify_ledger()")


def count_posted(db: psycopg.Connection) -> int:
    return scalar(db, "SELECT count(*) FROM wallet.transactions WHERE kind = 'deposit' AND status = 'posted'")


def count_scheduled(db: psycopg.Connection) -> int:
    return scalar(db, "SELECT count(*) FROM wallet.transactions WHERE status = 'scheduled'")


def schedule_many(db) -> tuple[list[Any], dict[Any, int]]:
    """DEPOSITS deposits spread over WALLETS new wallets, all due at once, LEAD from now;
    returns the deposit ids and the balance each wallet must end with. Two statements, so
    a busy machine cannot make scheduling outlast LEAD."""
    wallet_ids = [
        row[0]
        for row in db.execute(
            "SELECT (wallet.open_wallet('svc', NULL, NULL, 'merchant-' || n)).id"
            " FROM generate_series(1, %s) AS n",
            (WALLETS,),
        ).fetchall()
    ]
    available_at = db_now(db) + LEAD
    targets = [wallet_ids[number % WALLETS] for number in range(DEPOSITS)]
    amounts = [1_000 + number for number in range(DEPOSITS)]
    scheduled = db.execute(
        """
        SELECT deposit.id, deposit.status
        FROM unnest(%s::uuid[], %s::bigint[]) WITH ORDINALITY AS request (wallet_id, amount, position),
             LATERAL wallet.deposit('svc', NULL, NULL, NULL, request.wallet_id, request.amount,
                                    NULL, NULL, %s) AS deposit
        ORDER BY request.position
        """,
        (targets, amounts, available_at),
    ).fetchall()
    assert [status for _, status in scheduled] == ["scheduled"] * DEPOSITS
    expected = dict.fromkeys(wallet_ids, 0)
    for wallet_id, amount in zip(targets, amounts, strict=True):
        expected[wallet_id] += amount
    assert db_now(db) < available_at, "scheduling took too long for this test to mean anything"
    return [deposit_id for deposit_id, _ in scheduled], expected


def assert_settled_exactly_once(
    db: psycopg.Connection, deposit_ids: list[Any], expected: dict[Any, int]
) -> None:
    legs = rows(
        db,
        "SELECT t.id, t.status,"
        "       count(e.id) FILTER (WHERE e.wallet_id IS NOT NULL) AS wallet_legs,"
        "       count(e.id) FILTER (WHERE e.account = 'world') AS world_legs"
        " FROM wallet.transactions AS t LEFT JOIN wallet.entries AS e ON e.transaction_id = t.id"
        " WHERE t.id = ANY(%s) GROUP BY t.id, t.status",
        deposit_ids,
    )
    assert len(legs) == len(deposit_ids)
    wrong = [
        leg for leg in legs if (leg["status"], leg["wallet_legs"], leg["world_legs"]) != ("posted", 1, 1)
    ]
    assert wrong == [], f"{len(wrong)} deposits not settled exactly once, e.g. {wrong[:5]}"
    for wallet_id, balance in expected.items():
        wallet = get_wallet(db, wallet_id)
        assert (wallet["balance"], wallet["pending"]) == (balance, 0), wallet_id
    assert violations(db) == []


def cancel_deposit(db: psycopg.Connection, transaction_id: Any) -> None:
    db.execute("SELECT wallet.cancel_deposit('svc', NULL, NULL, NULL, %s::uuid)", (transaction_id,))


def settle_job_workers(db: psycopg.Connection) -> set[int]:
    return {
        row["worker_id"]
        for row in rows(
            db,
            "SELECT DISTINCT worker_id FROM procrastinate.procrastinate_jobs WHERE task_name = %s",
            SETTLE_TASK,
        )
    }


def test_sigkill_mid_settlement_then_restart_settles_each_deposit_exactly_once(db, workers):
    worker = workers.start(**STALLED)
    deposit_ids, expected = schedule_many(db)

    workers.wait_until(
        lambda: count_posted(db) > 0, timeout=SETTLE_SECONDS, what="first deposit posted", interval=0.005
    )
    worker.kill()
    killed_at = time.monotonic()
    posted_at_kill = count_posted(db)
    left_doing = scalar(
        db,
        "SELECT count(*) FROM procrastinate.procrastinate_jobs WHERE task_name = %s AND status = 'doing'",
        SETTLE_TASK,
    )

    assert 0 < posted_at_kill < DEPOSITS, f"the kill did not land mid-settlement: {posted_at_kill} posted"
    workers.restart(worker)
    workers.wait_until(
        lambda: count_scheduled(db) == 0,
        timeout=RECOVERY_SECONDS,
        what="every deposit settled after the kill",
    )
    recovery_seconds = time.monotonic() - killed_at
    print(
        f"SIGKILL with {posted_at_kill}/{DEPOSITS} posted and {left_doing} settle jobs left 'doing':"
        f" all settled {recovery_seconds:.1f} s after the kill"
    )
    assert_settled_exactly_once(db, deposit_ids, expected)


@pytest.mark.parametrize("sweep_limit", ["0", "50"])
def test_two_workers_at_once_settle_each_deposit_exactly_once(db, workers, sweep_limit):
    # Without sweeps each job posts its own deposit, so both workers must take part;
    # with them, the two workers' sweeps race over the same due deposits.
    workers.start(WALLET_SETTLE_SWEEP_LIMIT=sweep_limit)
    workers.start(WALLET_SETTLE_SWEEP_LIMIT=sweep_limit)
    deposit_ids, expected = schedule_many(db)

    workers.wait_until(lambda: count_scheduled(db) == 0, timeout=SETTLE_SECONDS, what="every deposit settled")

    assert_settled_exactly_once(db, deposit_ids, expected)
    workers.wait_until(
        lambda: (
            scalar(
                db,
                "SELECT count(*) FROM procrastinate.procrastinate_jobs"
                " WHERE task_name = %s AND status IN ('todo', 'doing')",
                SETTLE_TASK,
            )
            == 0
        ),
        timeout=SETTLE_SECONDS,
        what="every settlement job finished",
    )
    # Both took part, or this test proved nothing about two workers.
    assert len(settle_job_workers(db) - {None}) == 2


def test_a_deleted_settlement_job_is_replaced_by_the_reconciler(db, workers, deposit_at):
    wallet_id = new_wallet(db)
    workers.start()
    deposit = deposit_at(wallet_id, 4_000, db_now(db) + LEAD)
    lock = f"settle-deposit:{deposit['id']}"
    # procrastinate's delete trigger names its tables unqualified: search its schema, as the worker does.
    db.execute("SET search_path = procrastinate")
    deleted = db.execute(
        "DELETE FROM procrastinate.procrastinate_jobs WHERE queueing_lock = %s RETURNING id", (lock,)
    ).fetchall()
    assert len(deleted) == 1

    workers.wait_until(
        lambda: scalar(db, "SELECT status FROM wallet.transactions WHERE id = %s", deposit["id"]) == "posted",
        timeout=PERIODIC_SECONDS,
        what="deposit without a job posted by the reconciler",
    )

    # The worker marks its job done in a transaction of its own, just after the settlement's.
    workers.wait_until(
        lambda: (
            scalar(
                db,
                "SELECT count(*) FROM procrastinate.procrastinate_jobs WHERE queueing_lock = %s"
                " AND status = 'succeeded'",
                lock,
            )
            == 1
        ),
        timeout=PERIODIC_SECONDS,
        what="the reconciler's job marked succeeded",
    )
    [job] = rows(
        db, "SELECT id, status::text FROM procrastinate.procrastinate_jobs WHERE queueing_lock = %s", lock
    )
    assert job["id"] > deleted[0][0] and job["status"] == "succeeded"
    wallet = get_wallet(db, wallet_id)
    assert (wallet["balance"], wallet["pending"]) == (4_000, 0)
    assert violations(db) == []


def test_sigterm_stops_a_busy_worker_cleanly_and_the_next_one_settles_the_rest(db, workers):
    worker = workers.start()
    deposit_ids, expected = schedule_many(db)
    workers.wait_until(
        lambda: count_posted(db) > 0, timeout=SETTLE_SECONDS, what="first deposit posted", interval=0.005
    )

    code, seconds = worker.terminate(timeout=10)

    assert code == 0, worker.log_tail()
    assert seconds < 5, f"SIGTERM took {seconds:.1f} s"
    # Graceful: running jobs were finished, none abandoned as 'doing' for the stalled-job sweep.
    doing = scalar(db, "SELECT count(*) FROM procrastinate.procrastinate_jobs WHERE status = 'doing'")
    assert doing == 0
    assert count_scheduled(db) > 0, "the worker settled everything before SIGTERM: nothing left to prove"
    # Well within the 30 s after which stalled jobs would be retried: nothing waits for that.
    workers.start()
    workers.wait_until(lambda: count_scheduled(db) == 0, timeout=SETTLE_SECONDS, what="the rest settled")
    assert_settled_exactly_once(db, deposit_ids, expected)


PERIODIC_TASKS = ("wallet:reconcile_scheduled_deposits", "wallet:retry_stalled_jobs")


def periodic_jobs_succeeded_after(db: psycopg.Connection, after_id: int) -> dict[str, int] | None:
    """The newest succeeded job of each periodic task with an id above after_id, once every
    periodic task has one."""
    found = rows(
        db,
        "SELECT task_name, max(id) AS id FROM procrastinate.procrastinate_jobs"
        " WHERE task_name = ANY(%s) AND id > %s AND status = 'succeeded' GROUP BY task_name",
        list(PERIODIC_TASKS),
        after_id,
    )
    newest = {row["task_name"]: row["id"] for row in found}
    return newest if newest.keys() == set(PERIODIC_TASKS) else None


def test_periodic_tasks_keep_firing_after_a_worker_is_killed_and_replaced(db, workers):
    worker = workers.start()
    workers.wait_until(
        lambda: periodic_jobs_succeeded_after(db, 0), timeout=PERIODIC_SECONDS, what="first periodic jobs"
    )
    worker.kill()
    newest_id = scalar(db, "SELECT max(id) FROM procrastinate.procrastinate_jobs")
    # What the killed worker leaves behind, and a new deferrer has to live with.
    assert scalar(db, "SELECT count(*) FROM procrastinate.procrastinate_periodic_defers") > 0

    replacement = workers.restart(worker)

    after_restart = workers.wait_until(
        lambda: periodic_jobs_succeeded_after(db, newest_id),
        timeout=PERIODIC_SECONDS,
        what="periodic jobs after the restart",
    )
    ran_on = rows(
        db,
        "SELECT DISTINCT worker_id FROM procrastinate.procrastinate_jobs WHERE id = ANY(%s)",
        list(after_restart.values()),
    )
    assert ran_on == [{"worker_id": replacement.worker_id}]
    failed = rows(
        db,
        "SELECT id, task_name FROM procrastinate.procrastinate_jobs"
        " WHERE task_name = ANY(%s) AND status = 'failed'",
        list(PERIODIC_TASKS),
    )
    assert failed == []


@pytest.mark.soak
def test_two_workers_killed_again_and_again_never_lose_or_double_a_settlement(db, workers, deposit_at):
    # A soak test (about 80 s): pytest's addopts deselect it; `make soak` runs it.
    chaos = random.Random(11)
    running = [workers.start(**STALLED), workers.start(**STALLED)]
    wallet_ids = [new_wallet(db, f"merchant-{number}") for number in range(200)]
    # Due over 30 s from about 3 s after each is scheduled, however long scheduling takes.
    started, base = time.monotonic(), db_now(db)
    deposits = [
        deposit_at(
            wallet_ids[number % 200],
            1_000 + number,
            base + timedelta(seconds=time.monotonic() - started + 3 + number % 30),
        )
        for number in range(2_000)
    ]
    assert {deposit["status"] for deposit in deposits} == {"scheduled"}

    canceled, refused = set(), set()
    for _ in range(12):
        posted_before = count_posted(db)
        workers.wait_until(
            lambda posted_before=posted_before: (
                count_posted(db) >= posted_before + 60 or count_scheduled(db) == 0
            ),
            timeout=RECOVERY_SECONDS,
            what="more deposits posted",
        )
        if count_scheduled(db) == 0:
            break
        victim = chaos.choice(running)
        running.remove(victim)
        running.append(workers.restart(victim))
        untried = [deposit for deposit in deposits if deposit["id"] not in canceled | refused]
        for deposit in chaos.sample(untried, 10):
            try:
                cancel_deposit(db, deposit["id"])
                canceled.add(deposit["id"])
            except psycopg.Error as error:
                assert error.sqlstate == "WC409", error
                refused.add(deposit["id"])
    workers.wait_until(
        lambda: count_scheduled(db) == 0, timeout=RECOVERY_SECONDS + 60, what="every deposit settled"
    )

    assert canceled and refused
    settled = [deposit for deposit in deposits if deposit["id"] not in canceled]
    expected = dict.fromkeys(wallet_ids, 0)
    for deposit in settled:
        expected[deposit["wallet_id"]] += deposit["amount"]
    assert_settled_exactly_once(db, [deposit["id"] for deposit in settled], expected)
    legs = scalar(db, "SELECT count(*) FROM wallet.entries WHERE transaction_id = ANY(%s)", list(canceled))
    assert legs == 0
