-- procrastinate's queue moves from public to schema procrastinate, which only the
-- ledger's owner may write.
--
-- Why: the ledger's owner-run functions that call procrastinate's SQL had public on their
-- search_path (procrastinate names its tables unqualified). Where PUBLIC may CREATE in
-- public (every database upgraded or restored from PostgreSQL 14 or older), a wallet_app
-- login could plant an operator or a function overload there that those functions then
-- ran as the owner (tests/sql/test_privileges.py). Now they search pg_catalog, then
-- procrastinate, and never public.
--
-- Fresh installs apply procrastinate's schema in 0003 (into public) and move it here, so
-- every database ends the same. The objects are named one by one, as procrastinate 3.10.0
-- creates them (its schema.sql): a loop over names would also move anything a stranger had
-- created in public under a procrastinate_ name. Sequences and indexes go with their table,
-- the array type with its type; grants stay with each object.
-- Functions move first, while the types in their signatures are still in public.
--
-- Later procrastinate upgrades apply its shipped migration files with
-- search_path = procrastinate, as they name everything unqualified.
-- depends: 0006_chain_and_history

DO $$
BEGIN
    IF (SELECT version FROM wallet.components WHERE name = 'procrastinate') IS DISTINCT FROM '3.10.0' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'procrastinate''s schema is not the one this migration moves',
            DETAIL  = format('wallet.components records %s; this migration knows 3.10.0',
                             (SELECT version FROM wallet.components WHERE name = 'procrastinate'));
    END IF;
END
$$;

CREATE SCHEMA procrastinate;
-- The worker and the API's deposits use the queue (its objects' grants are from 0003).
GRANT USAGE ON SCHEMA procrastinate TO wallet_app;

ALTER FUNCTION public.procrastinate_defer_jobs_v1(public.procrastinate_job_to_defer_v1[]) SET SCHEMA procrastinate;
ALTER FUNCTION public.procrastinate_defer_periodic_job_v2(
    character varying, character varying, character varying, character varying, integer,
    character varying, bigint, jsonb) SET SCHEMA procrastinate;
ALTER FUNCTION public.procrastinate_fetch_job_v2(character varying[], bigint) SET SCHEMA procrastinate;
ALTER FUNCTION public.procrastinate_finish_job_v1(bigint, public.procrastinate_job_status, boolean) SET SCHEMA procrastinate;
ALTER FUNCTION public.procrastinate_cancel_job_v1(bigint, boolean, boolean) SET SCHEMA procrastinate;
ALTER FUNCTION public.procrastinate_retry_job_v1(
    bigint, timestamp with time zone, integer, character varying, character varying) SET SCHEMA procrastinate;
ALTER FUNCTION public.procrastinate_retry_job_v2(
    bigint, timestamp with time zone, integer, character varying, character varying) SET SCHEMA procrastinate;
ALTER FUNCTION public.procrastinate_notify_queue_job_inserted_v1() SET SCHEMA procrastinate;
ALTER FUNCTION public.procrastinate_notify_queue_abort_job_v1() SET SCHEMA procrastinate;
ALTER FUNCTION public.procrastinate_trigger_function_status_events_insert_v1() SET SCHEMA procrastinate;
ALTER FUNCTION public.procrastinate_trigger_function_status_events_update_v1() SET SCHEMA procrastinate;
ALTER FUNCTION public.procrastinate_trigger_function_scheduled_events_v1() SET SCHEMA procrastinate;
ALTER FUNCTION public.procrastinate_trigger_abort_requested_events_procedure_v1() SET SCHEMA procrastinate;
ALTER FUNCTION public.procrastinate_unlink_periodic_defers_v1() SET SCHEMA procrastinate;
ALTER FUNCTION public.procrastinate_register_worker_v1() SET SCHEMA procrastinate;
ALTER FUNCTION public.procrastinate_unregister_worker_v1(bigint) SET SCHEMA procrastinate;
ALTER FUNCTION public.procrastinate_update_heartbeat_v1(bigint) SET SCHEMA procrastinate;
ALTER FUNCTION public.procrastinate_prune_stalled_workers_v1(double precision) SET SCHEMA procrastinate;

ALTER TYPE public.procrastinate_job_status SET SCHEMA procrastinate;
ALTER TYPE public.procrastinate_job_event_type SET SCHEMA procrastinate;
ALTER TYPE public.procrastinate_job_to_defer_v1 SET SCHEMA procrastinate;

ALTER TABLE public.procrastinate_workers SET SCHEMA procrastinate;
ALTER TABLE public.procrastinate_jobs SET SCHEMA procrastinate;
ALTER TABLE public.procrastinate_periodic_defers SET SCHEMA procrastinate;
ALTER TABLE public.procrastinate_events SET SCHEMA procrastinate;

-- Nothing of procrastinate's may stay behind in public: a newer procrastinate with more
-- objects needs this migration's list extended, not a half-moved queue.
DO $$
DECLARE
    v_left text;
BEGIN
    SELECT string_agg(name, ', ') INTO v_left
    FROM (
        SELECT c.oid::regclass::text AS name FROM pg_class AS c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relname LIKE 'procrastinate\_%'
          AND c.relowner = current_user::regrole
        UNION ALL
        SELECT p.oid::regprocedure::text FROM pg_proc AS p
        WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'procrastinate\_%'
          AND p.proowner = current_user::regrole
        UNION ALL
        SELECT t.oid::regtype::text FROM pg_type AS t
        WHERE t.typnamespace = 'public'::regnamespace AND t.typname LIKE 'procrastinate\_%'
          AND t.typowner = current_user::regrole
    ) AS left_behind;
    IF v_left IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'procrastinate objects left in schema public',
            DETAIL  = v_left;
    END IF;
END
$$;
