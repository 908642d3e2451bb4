"""Nothing the ledger runs as its owner resolves a name through a schema others may write.

Every database upgraded or restored from PostgreSQL 14 or older keeps `CREATE ON SCHEMA
public TO PUBLIC`. There a wallet_app login can plant an operator, a function overload or
a table in public; if an owner-run ledger function resolved names through public, the
planted code would run as the owner (who can rewrite every balance). So procrastinate's
queue lives in schema procrastinate, which only the ledger's owner may write, and the
functions that touch it put that schema, never public, on their search_path.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from ledger_helpers import deposit, new_wallet, one, rows, scalar

QUEUE_SCHEMA = "procrastinate"
# The nearest a deposit may be scheduled: within a second of now it is an instant deposit.
LEAD_SECONDS = 1.2

# What an attacker holding only wallet_app (and CREATE on public) plants: each object is
# an exact-type match for a call in the ledger's queue helpers or in procrastinate's SQL
# (so it would beat the polymorphic built-in wherever public is on the path), records
# that it ran, and then behaves like the built-in, as a careful attacker's would.
# {queue} is the schema procrastinate's types are in.
PLANTED = """
CREATE TABLE public.planted_calls (name text NOT NULL, run_as text NOT NULL DEFAULT current_user);
GRANT INSERT ON public.planted_calls TO PUBLIC;

CREATE FUNCTION public.planted_record(p_name text) RETURNS void
LANGUAGE sql AS $$ INSERT INTO public.planted_calls (name) VALUES (p_name) $$;

-- 'settle-deposit:' || p_transaction_id (wallet.enqueue_settlement, delete_settlement_job)
CREATE FUNCTION public.planted_text_uuid(p_left text, p_right uuid) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.planted_record('||(text, uuid)');
    RETURN pg_catalog.textcat(p_left, p_right::text);
END $$;
CREATE OPERATOR public.|| (LEFTARG = text, RIGHTARG = uuid, FUNCTION = public.planted_text_uuid);

-- 'procrastinate_queue_v1#' || NEW.queue_name (procrastinate's NOTIFY trigger)
CREATE FUNCTION public.planted_varchar_cat(p_left varchar, p_right varchar) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.planted_record('||(varchar, varchar)');
    RETURN pg_catalog.textcat(p_left, p_right);
END $$;
CREATE OPERATOR public.|| (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.planted_varchar_cat);

-- jsonb_build_object('transaction_id', p_transaction_id) (the settlement job's arguments)
CREATE FUNCTION public.jsonb_build_object(p_key text, p_value uuid) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.planted_record('jsonb_build_object(text, uuid)');
    RETURN pg_catalog.jsonb_build_object(p_key, p_value);
END $$;

-- json_build_object('type', 'job_inserted', 'job_id', NEW.id) (the NOTIFY trigger)
CREATE FUNCTION public.json_build_object(p_k1 text, p_v1 text, p_k2 text, p_v2 bigint) RETURNS json
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.planted_record('json_build_object(text, text, text, bigint)');
    RETURN pg_catalog.json_build_object(p_k1, p_v1, p_k2, p_v2);
END $$;

-- FROM unnest(jobs) (procrastinate_defer_jobs_v1)
CREATE FUNCTION public.unnest(p_jobs {queue}.procrastinate_job_to_defer_v1[])
RETURNS SETOF {queue}.procrastinate_job_to_defer_v1
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.planted_record('unnest(procrastinate_job_to_defer_v1[])');
    RETURN QUERY SELECT * FROM pg_catalog.unnest(p_jobs);
END $$;

-- array_agg(id) (procrastinate_defer_jobs_v1)
CREATE FUNCTION public.planted_append(p_state bigint[], p_value bigint) RETURNS bigint[]
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.planted_record('array_agg(bigint)');
    RETURN pg_catalog.array_append(p_state, p_value);
END $$;
CREATE AGGREGATE public.array_agg(bigint) (SFUNC = public.planted_append, STYPE = bigint[]);

-- status = 'todo' (wallet.delete_settlement_job, procrastinate's functions)
CREATE FUNCTION public.planted_status_eq(
    p_left {queue}.procrastinate_job_status, p_right {queue}.procrastinate_job_status
) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.planted_record('=(procrastinate_job_status, procrastinate_job_status)');
    RETURN pg_catalog.enum_eq(p_left, p_right);
END $$;
CREATE OPERATOR public.= (
    LEFTARG = {queue}.procrastinate_job_status, RIGHTARG = {queue}.procrastinate_job_status,
    FUNCTION = public.planted_status_eq);
"""

# Decoys under procrastinate's own names, which public can hold only once the queue has
# left it: anything that still resolved its names through public would land here.
DECOYS = """
CREATE TABLE public.procrastinate_jobs (LIKE {queue}.procrastinate_jobs INCLUDING DEFAULTS);
GRANT ALL ON public.procrastinate_jobs TO PUBLIC;
CREATE TABLE public.procrastinate_events (LIKE {queue}.procrastinate_events INCLUDING DEFAULTS);
GRANT ALL ON public.procrastinate_events TO PUBLIC;

CREATE FUNCTION public.procrastinate_defer_jobs_v1(p_jobs {queue}.procrastinate_job_to_defer_v1[])
RETURNS bigint[]
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.planted_record('procrastinate_defer_jobs_v1');
    RETURN ARRAY[-1]::bigint[];
END $$;
"""


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


def plant(app: psycopg.Connection, queue: str) -> None:
    app.execute(PLANTED.replace("{queue}", queue))
    if queue != "public":
        app.execute(DECOYS.replace("{queue}", queue))


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
    time.sleep(LEAD_SECONDS + 0.1)
    reenqueued = scalar(app, "SELECT wallet.reconcile_scheduled_deposits(interval '0 seconds')")
    jobs_after_reconcile = {d: len(waiting_jobs(db, queue, d)) for d in (settled, canceled, lost_job)}
    outcomes = [scalar(app, "SELECT wallet.settle_deposit(%s, false, 0)", d) for d in (settled, lost_job)]
    stats = one(app, "SELECT settled, canceled, waiting, queue_depth FROM wallet.settlement_stats()")

    assert scalar(db, "SELECT count(*) FROM public.planted_calls") == 0, rows(
        db, "SELECT * FROM public.planted_calls"
    )
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
    queue_callers = rows(
        db,
        "SELECT p.proname AS name, s AS search_path FROM pg_proc AS p, unnest(p.proconfig) AS s"
        " WHERE p.pronamespace = 'wallet'::regnamespace AND s LIKE 'search_path=%%procrastinate%%'"
        " ORDER BY 1",
    )

    assert unsafe == []
    assert unpinned_definers == []
    # The two helpers that call procrastinate's SQL, which names its tables unqualified.
    assert queue_callers == [
        {"name": name, "search_path": "search_path=pg_catalog, procrastinate, pg_temp"}
        for name in ("delete_settlement_job", "enqueue_settlement")
    ]
