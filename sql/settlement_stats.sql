-- wallet.settlement_stats: how delayed deposits are doing, for operators and `wallet stats`.
-- Counts over the deposits scheduled in the last p_window, plus the live queue:
--   settled, failed, canceled, waiting   deposits by outcome
--   overdue                              scheduled deposits already due (should stay near 0)
--   retried_jobs                         settlement jobs that needed more than one attempt
--   queue_depth                          settlement jobs waiting or running
--   lag_*_ms                             posted_at - available_at of the settled ones
-- Reads only; locks nothing.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.settlement_stats(p_window interval DEFAULT interval '1 hour')
RETURNS TABLE (
    settled      bigint,
    failed       bigint,
    canceled     bigint,
    waiting      bigint,
    overdue      bigint,
    retried_jobs bigint,
    queue_depth  bigint,
    lag_p50_ms   double precision,
    lag_p99_ms   double precision,
    lag_max_ms   double precision
)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH recent AS (
        SELECT status, available_at,
               extract(epoch FROM posted_at - available_at) * 1000 AS lag_ms
        FROM wallet.transactions
        WHERE (kind = 'deposit' AND history_seq IS NOT NULL AND created_at > now() - p_window)
           OR status = 'scheduled'
    ),
    jobs AS (
        -- Finishing a job counts an attempt, so a first-time success has attempts = 1.
        SELECT count(*) FILTER (WHERE attempts > 1 OR (attempts = 1 AND status IN ('todo', 'doing'))) AS retried,
               count(*) FILTER (WHERE status IN ('todo', 'doing')) AS depth
        FROM procrastinate.procrastinate_jobs
        WHERE task_name = 'wallet:settle_deposit'
    )
    SELECT count(*) FILTER (WHERE status = 'posted'),
           count(*) FILTER (WHERE status = 'failed'),
           count(*) FILTER (WHERE status = 'canceled'),
           count(*) FILTER (WHERE status = 'scheduled'),
           count(*) FILTER (WHERE status = 'scheduled' AND available_at <= now()),
           (SELECT retried FROM jobs),
           (SELECT depth FROM jobs),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY lag_ms) FILTER (WHERE status = 'posted'),
           percentile_cont(0.99) WITHIN GROUP (ORDER BY lag_ms) FILTER (WHERE status = 'posted'),
           max(lag_ms) FILTER (WHERE status = 'posted')
    FROM recent
$$;

REVOKE ALL ON FUNCTION wallet.settlement_stats(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.settlement_stats(interval) TO wallet_app, wallet_auditor;
