-- wallet.hold_stats: how holds are doing, for operators and the API's metrics.
--   active              holds active now
--   held_total          what they reserve (the sum of every wallet's held)
--   expiring_soon       active holds expiring within the next hour
--   overdue             active holds past their expires_at (their expiry should follow within
--                       seconds; should stay near 0)
--   expired             holds expired in the last p_window
--   expiry_lag_*_ms     closed_at - expires_at of those: how late the expiry ran
--   queue_depth         expiry jobs waiting (one per active hold, scheduled for its expires_at)
--                       or running
-- Reads the active holds (holds_active_expiry_idx), the expired ones of the window
-- (holds_expired_idx) and the holds queue; locks nothing.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.hold_stats(p_window interval DEFAULT interval '1 hour')
RETURNS TABLE (
    active             bigint,
    held_total         numeric,
    expiring_soon      bigint,
    overdue            bigint,
    expired            bigint,
    expiry_lag_p50_ms  double precision,
    expiry_lag_p99_ms  double precision,
    expiry_lag_max_ms  double precision,
    queue_depth        bigint
)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH live AS (
        SELECT count(*) AS active,
               coalesce(sum(remaining), 0) AS held_total,
               count(*) FILTER (WHERE expires_at > now() AND expires_at <= now() + interval '1 hour') AS expiring_soon,
               count(*) FILTER (WHERE expires_at <= now()) AS overdue
        FROM wallet.holds
        WHERE status = 'active'
    ),
    recent AS (
        SELECT count(*) AS expired,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY lag_ms) AS lag_p50_ms,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY lag_ms) AS lag_p99_ms,
               max(lag_ms) AS lag_max_ms
        FROM (SELECT extract(epoch FROM closed_at - expires_at)::double precision * 1000 AS lag_ms
              FROM wallet.holds
              WHERE status = 'expired' AND closed_at > now() - p_window) AS lags
    ),
    jobs AS (
        SELECT count(*) AS depth
        FROM procrastinate.procrastinate_jobs
        WHERE queue_name = 'holds' AND task_name = 'wallet:expire_hold' AND status IN ('todo', 'doing')
    )
    SELECT live.active, live.held_total, live.expiring_soon, live.overdue,
           recent.expired, recent.lag_p50_ms, recent.lag_p99_ms, recent.lag_max_ms,
           jobs.depth
    FROM live, recent, jobs
$$;

REVOKE ALL ON FUNCTION wallet.hold_stats(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.hold_stats(interval) TO wallet_app, wallet_auditor;
