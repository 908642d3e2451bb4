"""Objects a wallet_app login plants in schema public, for the tests that prove they never run
(tests/sql/test_privileges.py through the ledger's functions, tests/jobs through a worker).

Every database upgraded or restored from PostgreSQL 14 or older lets PUBLIC create in
public; the tests grant it so on purpose.
"""

from __future__ import annotations

import psycopg

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


def plant(app: psycopg.Connection, queue: str) -> None:
    """Plant everything, as the role app is set to; the decoys only where their names are free."""
    app.execute(PLANTED.replace("{queue}", queue))
    if queue != "public":
        app.execute(DECOYS.replace("{queue}", queue))


def planted_calls(connection: psycopg.Connection) -> list[tuple[str, str]]:
    """(object, role it ran as) for every call of planted code so far."""
    return connection.execute("SELECT name, run_as FROM public.planted_calls").fetchall()
