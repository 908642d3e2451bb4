"""Nothing the ledger runs as its owner resolves a name through a schema others may write.

Every database upgraded or restored from PostgreSQL 14 or older keeps `CREATE ON SCHEMA
public TO PUBLIC`. There a wallet_app login can plant an operator, a function overload or
a table in public; if an owner-run ledger function resolved names through public, the
planted code would run as the owner (who can rewrite every balance). So procrastinate's
queue lives in schema procrastinate, which only the ledger's owner may write, and the
functions that touch it put that schema, never public, on their search_path.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.sql.public_schema_attack import plant, planted_calls
from tests.support.ledger import deposit, new_wallet, one, rows, scalar, wait_until_due

QUEUE_SCHEMA = "procrastinate"
# The nearest a deposit may be scheduled: within a second of now it is an instant deposit.
LEAD_SECONDS = 1.2


def queue_schema(db: psycopg.Connection) -> str:
    return scalar(
        db, "SELECT relnamespace::regnamespace::text FROM pg_class WHERE relname = 'procrastinate_jobs'"
    )


@pytest.fixture
def public_writable_by_all(db: psycopg.Connection) -> str:
    """The grant every database from PostgreSQL 14 or older keeps; returns the queue's schema."""
    db.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    return queue_schema(db)


@pytest.fixture
def app(database_url: str) -> Iterator[psycopg.Connection]:
    """A wallet_app session (the API's or the worker's privileges) with the default search_path."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("SET ROLE wallet_app")
        yield connection


def schedule(app: psycopg.Connection, wallet_id: uuid.UUID, amount: int) -> uuid.UUID:
    scheduled = one(
        app,
        "SELECT * FROM wallet.deposit('svc', NULL, NULL, NULL, %s::uuid, %s::bigint, NULL, NULL,"
        " now() + make_interval(secs => %s))",
        wallet_id,
        amount,
        LEAD_SECONDS,
    )
    assert scheduled["status"] == "scheduled", scheduled
    return scheduled["id"]


def waiting_jobs(db: psycopg.Connection, queue: str, deposit_id: uuid.UUID) -> list[dict]:
    # The lock is built here, not with || in SQL: this session must not run planted code either.
    return rows(
        db,
        f"SELECT args, status::text FROM {queue}.procrastinate_jobs"
        " WHERE queueing_lock = %s AND status::text = 'todo'",
        f"settle-deposit:{deposit_id}",
    )


def test_objects_planted_in_public_by_wallet_app_never_run(db, app, public_writable_by_all):
    queue = public_writable_by_all
    plant(app, queue)
    # The checks below must not run planted code themselves (procrastinate's triggers name
    # its tables unqualified, so the queue's schema is on the path, as for the worker).
    db.execute(f"SET search_path = pg_catalog, {queue}")

    wallet_id = new_wallet(app, "merchant-1")
    instant = deposit(app, wallet_id, 10_000)
    settled, canceled, lost_job = (schedule(app, wallet_id, amount) for amount in (5_000, 7_000, 3_000))
    jobs_when_scheduled = waiting_jobs(db, queue, settled)
    one(app, "SELECT * FROM wallet.cancel_deposit('svc', NULL, NULL, NULL, %s::uuid)", canceled)
    # A job lost (deleted by hand), to be found and enqueued again by the reconciler.
    db.execute(
        f"DELETE FROM {queue}.procrastinate_jobs WHERE queueing_lock = %s", (f"settle-deposit:{lost_job}",)
    )
    wait_until_due(db, settled, canceled, lost_job)
    reenqueued = scalar(app, "SELECT wallet.reconcile_scheduled_deposits(interval '0 seconds')")
    jobs_after_reconcile = {d: len(waiting_jobs(db, queue, d)) for d in (settled, canceled, lost_job)}
    outcomes = [scalar(app, "SELECT wallet.settle_deposit(%s, false, 0)", d) for d in (settled, lost_job)]
    stats = one(app, "SELECT settled, canceled, waiting, queue_depth FROM wallet.settlement_stats()")

    assert planted_calls(db) == []
    assert instant["status"] == "posted"
    assert jobs_when_scheduled == [{"args": {"transaction_id": str(settled)}, "status": "todo"}]
    assert (reenqueued, jobs_after_reconcile) == (1, {settled: 1, canceled: 0, lost_job: 1})
    assert outcomes == ["posted", "posted"]
    assert stats == {"settled": 2, "canceled": 1, "waiting": 0, "queue_depth": 2}
    assert one(db, "SELECT balance, pending FROM wallet.wallets WHERE id = %s", wallet_id) == {
        "balance": 18_000,
        "pending": 0,
    }
    assert rows(db, "SELECT * FROM wallet.verify_ledger()") == []
    if queue != "public":
        assert scalar(db, "SELECT count(*) FROM public.procrastinate_jobs") == 0
        assert scalar(db, "SELECT count(*) FROM public.procrastinate_events") == 0


def test_the_queue_lives_in_a_schema_only_its_owner_may_write(db, public_writable_by_all):
    writers = rows(
        db,
        "SELECT n.nspname AS schema, a.grantee::regrole::text AS grantee"
        " FROM pg_namespace AS n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) AS a"
        " WHERE n.nspname IN ('wallet', %s) AND a.privilege_type = 'CREATE' AND a.grantee <> n.nspowner",
        public_writable_by_all,
    )

    assert public_writable_by_all == QUEUE_SCHEMA
    assert writers == []


def test_no_function_run_as_the_owner_searches_a_schema_others_may_write(db, public_writable_by_all):
    """Every search_path pinned in schemas wallet and procrastinate names only schemas where
    no role but the schema's owner (the function's owner, or a superuser) may CREATE."""
    unsafe = rows(
        db,
        """
        WITH path AS (
            SELECT p.oid::regprocedure::text AS function, p.proowner,
                   btrim(path_schema, ' "') AS schema_name
            FROM pg_proc AS p,
                 unnest(p.proconfig) AS setting,
                 unnest(string_to_array(substr(setting, length('search_path=') + 1), ',')) AS path_schema
            WHERE setting LIKE 'search_path=%%'
              AND p.pronamespace::regnamespace::text IN ('wallet', %s)
        )
        SELECT path.function, path.schema_name
        FROM path LEFT JOIN pg_namespace AS n ON n.nspname = path.schema_name
        WHERE path.schema_name NOT IN ('pg_catalog', 'pg_temp')
          AND (n.oid IS NULL  -- a schema that does not exist yet: whoever creates it writes it
               OR NOT (n.nspowner = path.proowner
                       OR (SELECT rolsuper FROM pg_roles WHERE oid = n.nspowner))
               OR EXISTS (
                   SELECT FROM aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) AS a
                   WHERE a.privilege_type = 'CREATE' AND a.grantee <> n.nspowner))
        ORDER BY 1, 2
        """,
        public_writable_by_all,
    )
    unpinned_definers = rows(
        db,
        "SELECT p.oid::regprocedure::text AS function FROM pg_proc AS p"
        " WHERE p.prosecdef AND p.pronamespace::regnamespace::text IN ('wallet', %s)"
        "   AND NOT EXISTS (SELECT FROM unnest(p.proconfig) AS s WHERE s LIKE 'search_path=%%')",
        public_writable_by_all,
    )
    # A name qualified with public resolves there whatever the search_path says.
    naming_public = rows(
        db,
        "SELECT p.oid::regprocedure::text AS function FROM pg_proc AS p"
        " WHERE p.pronamespace::regnamespace::text IN ('wallet', %s)"
        "   AND p.prosrc ~* '\\mpublic\\s*\\.[a-z_\"]'",
        public_writable_by_all,
    )
    queue_callers = rows(
        db,
        "SELECT p.proname AS name, s AS search_path FROM pg_proc AS p, unnest(p.proconfig) AS s"
        " WHERE p.pronamespace = 'wallet'::regnamespace AND s LIKE 'search_path=%%procrastinate%%'"
        " ORDER BY 1",
    )

    assert unsafe == []
    assert unpinned_definers == []
    assert naming_public == []
    # The helpers that call procrastinate's SQL, which names its tables unqualified: the
    # settlement jobs' and the hold expiry jobs'.
    assert queue_callers == [
        {"name": name, "search_path": "search_path=pg_catalog, procrastinate, pg_temp"}
        for name in (
            "delete_hold_expiry_job",
            "delete_settlement_job",
            "enqueue_hold_expiry",
            "enqueue_settlement",
        )
    ]
