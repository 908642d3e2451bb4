-- The settlement jobs of delayed deposits (sql/settle_deposit.sql has their lifecycle):
-- enqueue, delete, reconcile. With sql/hold_expiry.sql (the holds' expiry jobs) and the
-- stats' reads, the only ledger code that touches procrastinate's queue.
--
-- The settlement job lives in procrastinate's queue (schema procrastinate, which only the
-- ledger's owner may write) and is enqueued in the same database transaction as the
-- deposit: no deposit without its job, no job without its deposit. Its queueing_lock
-- ('settle-deposit:<id>') allows one waiting job per deposit. No procrastinate `lock` is
-- used: a job scheduled for the future would block every later job with the same lock
-- until its time.

-- wallet.enqueue_settlement: the procrastinate job that settles p_transaction_id at p_at.
-- Returns the job id. procrastinate's functions (and its triggers) name their tables
-- unqualified, so this one and wallet.delete_settlement_job put its schema on the search
-- path, after pg_catalog. Never public: these run as the ledger's owner, and wherever
-- others may create objects in public, a planted operator or overload there would run
-- as the owner too (tests/sql/test_privileges.py).
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.enqueue_settlement(p_transaction_id uuid, p_at timestamptz)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, procrastinate, pg_temp
AS $$
BEGIN
    RETURN (procrastinate.procrastinate_defer_jobs_v1(ARRAY[
        ROW('deposits',
            'wallet:settle_deposit',
            0,
            NULL,
            'settle-deposit:' || p_transaction_id,
            jsonb_build_object('transaction_id', p_transaction_id),
            p_at)::procrastinate.procrastinate_job_to_defer_v1
    ]))[1];
END
$$;

-- wallet.delete_settlement_job: delete the waiting settlement job of p_transaction_id, if any.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.delete_settlement_job(p_transaction_id uuid)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, procrastinate, pg_temp
AS $$
    SELECT procrastinate.procrastinate_cancel_job_v1(id, false, true)
    FROM procrastinate.procrastinate_jobs
    WHERE queueing_lock = 'settle-deposit:' || p_transaction_id AND status = 'todo'
$$;

-- wallet.reconcile_scheduled_deposits: re-enqueue the settlement of every scheduled
-- deposit due for longer than p_grace that has no live job (its job was deleted, failed
-- on transient errors past its retries, or never ran). Returns how many were enqueued.
-- A stalled 'doing' job is procrastinate's to retry (see jobs/tasks.py); a duplicate
-- delivery would be harmless anyway, settle_deposit being idempotent.
-- Locks: nothing beyond the inserted job rows.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.reconcile_scheduled_deposits(p_grace interval DEFAULT interval '30 seconds')
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_transaction_id uuid;
    v_enqueued       integer := 0;
BEGIN
    FOR v_transaction_id IN
        SELECT t.id
        FROM wallet.transactions AS t
        WHERE t.status = 'scheduled'
          AND t.available_at < now() - p_grace
          AND NOT EXISTS (
              SELECT FROM procrastinate.procrastinate_jobs AS j
              WHERE j.queueing_lock = 'settle-deposit:' || t.id
                AND j.status IN ('todo', 'doing'))
        ORDER BY t.available_at
        LIMIT 1000
    LOOP
        PERFORM wallet.enqueue_settlement(v_transaction_id, now());
        v_enqueued := v_enqueued + 1;
    END LOOP;
    RETURN v_enqueued;
END
$$;

REVOKE ALL ON FUNCTION wallet.enqueue_settlement(uuid, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.delete_settlement_job(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.reconcile_scheduled_deposits(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.reconcile_scheduled_deposits(interval) TO wallet_app;
