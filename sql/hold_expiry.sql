-- Expiring holds (sql/holds.sql has the hold's life): the expiry of one hold and of a batch of
-- due ones, and the expiry jobs' enqueue, delete and reconcile.
--
-- wallet.place_hold enqueues, in the transaction that places the hold, a procrastinate job
-- (task 'wallet:expire_hold', queue 'holds', args {"hold_id": "<id>"}) scheduled for the
-- hold's expires_at: no hold without its job. Its queueing_lock ('expire-hold:<id>') allows
-- one waiting job per hold; no procrastinate `lock` (a job scheduled for the future would
-- block every later job of the same lock until its time). A capture that closes the hold,
-- or a void, deletes the waiting job. These functions, like those of
-- sql/settlement_jobs.sql, put procrastinate's schema on their search path, never public.

-- wallet.enqueue_hold_expiry: the procrastinate job that expires p_hold_id at p_at. Returns
-- the job id.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.enqueue_hold_expiry(p_hold_id uuid, p_at timestamptz)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, procrastinate, pg_temp
AS $$
BEGIN
    RETURN (procrastinate.procrastinate_defer_jobs_v1(ARRAY[
        ROW('holds',
            'wallet:expire_hold',
            0,
            NULL,
            'expire-hold:' || p_hold_id,
            jsonb_build_object('hold_id', p_hold_id),
            p_at)::procrastinate.procrastinate_job_to_defer_v1
    ]))[1];
END
$$;

-- wallet.delete_hold_expiry_job: delete the waiting expiry job of p_hold_id, if any (a running
-- one finishes and finds the hold closed).
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.delete_hold_expiry_job(p_hold_id uuid)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, procrastinate, pg_temp
AS $$
    SELECT procrastinate.procrastinate_cancel_job_v1(id, false, true)
    FROM procrastinate.procrastinate_jobs
    WHERE queueing_lock = 'expire-hold:' || p_hold_id AND status = 'todo'
$$;

-- wallet.expire_hold: expire the hold p_hold_id if it is active and due: it becomes expired,
-- what it still reserves is released (the wallet's held falls by its remaining), closed_at is
-- now. Called by its job; safe to call any number of times. Returns the outcome: 'expired';
-- 'not_due' before its expires_at (nothing changes); or the status it already had
-- ('captured', 'voided', 'expired'; nothing changes).
-- Locks: the hold row (FOR UPDATE), then the wallet row, as a capture or a void does: racing
-- them, it waits on the hold row and sees their outcome, so a hold ends exactly once.
-- Raises: WN404 not_found (no such hold), WT500 isolation_level_unsupported.
CREATE OR REPLACE FUNCTION wallet.expire_hold(p_hold_id uuid)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_hold wallet.holds;
BEGIN
    PERFORM wallet.require_read_committed();
    -- Released money is made durable whatever the caller's session says (the worker's queue
    -- bookkeeping runs with synchronous_commit off).
    PERFORM set_config('synchronous_commit', 'on', true);
    SELECT * INTO v_hold FROM wallet.holds WHERE id = p_hold_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'WN404', MESSAGE = 'hold not found',
            DETAIL = format('hold %s', p_hold_id);
    END IF;
    IF v_hold.status <> 'active' THEN
        RETURN v_hold.status;
    END IF;
    IF v_hold.expires_at > now() THEN
        RETURN 'not_due';
    END IF;
    PERFORM wallet.release_from_hold(v_hold, 0, 'expired');
    RETURN 'expired';
END
$$;

-- wallet.expire_due_holds: expire up to p_limit (0..1000) active holds that are due and that
-- no one else is changing, the longest overdue first, as wallet.expire_hold expires one.
-- Returns how many it expired. For the worker, beside its own hold's wallet.expire_hold: when
-- many holds fall due at once, one job expires a batch in one transaction and the jobs of the
-- rest find their holds expired (settlement's sweep, for holds), so the lag follows the
-- batch, not one hold a job.
-- Locks: the due holds' rows (FOR UPDATE SKIP LOCKED: it never waits for one, so a hold a
-- capture, void or job has taken is left to it), then their wallet rows in wallet id order.
-- No path waits for a hold row while holding a wallet row, so this order forms no cycle.
-- Raises: WI400 invalid_request (limit outside 0..1000), WT500 isolation_level_unsupported.
CREATE OR REPLACE FUNCTION wallet.expire_due_holds(p_limit integer DEFAULT 50)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_hold    wallet.holds;
    v_expired integer := 0;
BEGIN
    PERFORM wallet.require_read_committed();
    IF p_limit IS NULL OR p_limit NOT BETWEEN 0 AND 1000 THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'limit must be 0 to 1000';
    END IF;
    PERFORM set_config('synchronous_commit', 'on', true);
    FOR v_hold IN
        WITH due AS (
            SELECT * FROM wallet.holds
            WHERE status = 'active' AND expires_at <= now()
            ORDER BY expires_at
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED
        )
        SELECT * FROM due ORDER BY wallet_id, id
    LOOP
        PERFORM wallet.release_from_hold(v_hold, 0, 'expired');
        v_expired := v_expired + 1;
    END LOOP;
    RETURN v_expired;
END
$$;

-- wallet.reconcile_hold_expiries: re-enqueue the expiry of every active hold due for longer
-- than p_grace that has no live job (its job was deleted, failed past its retries, or never
-- ran), at most 1000 a run, the most overdue first. Returns how many were enqueued.
-- A stalled 'doing' job is procrastinate's to retry (see jobs/tasks.py); a duplicate delivery
-- would be harmless anyway, wallet.expire_hold being idempotent.
-- Locks: nothing beyond the inserted job rows.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.reconcile_hold_expiries(p_grace interval DEFAULT interval '30 seconds')
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_hold_id  uuid;
    v_enqueued integer := 0;
BEGIN
    FOR v_hold_id IN
        SELECT h.id
        FROM wallet.holds AS h
        WHERE h.status = 'active'
          AND h.expires_at < now() - p_grace
          AND NOT EXISTS (
              SELECT FROM procrastinate.procrastinate_jobs AS j
              WHERE j.queueing_lock = 'expire-hold:' || h.id
                AND j.status IN ('todo', 'doing'))
        ORDER BY h.expires_at
        LIMIT 1000
    LOOP
        PERFORM wallet.enqueue_hold_expiry(v_hold_id, now());
        v_enqueued := v_enqueued + 1;
    END LOOP;
    RETURN v_enqueued;
END
$$;

REVOKE ALL ON FUNCTION wallet.enqueue_hold_expiry(uuid, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.delete_hold_expiry_job(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.expire_hold(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.expire_due_holds(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.reconcile_hold_expiries(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.expire_hold(uuid) TO wallet_app;
GRANT EXECUTE ON FUNCTION wallet.expire_due_holds(integer) TO wallet_app;
GRANT EXECUTE ON FUNCTION wallet.reconcile_hold_expiries(interval) TO wallet_app;
