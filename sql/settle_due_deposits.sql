-- wallet.settle_due_deposits: post up to p_limit due scheduled deposits that nobody else
-- is settling right now (SKIP LOCKED), leaving any that cannot be posted to their own
-- jobs. Returns how many it posted. The sweep of delayed deposits: wallet.settle_deposit
-- runs it when its own deposit is settled already (p_sweep_limit); an operator may run it. It posts
-- with wallet.settle_deposit's steps (sql/settle_deposit.sql, which also has the lifecycle).
-- Locks: the deposit rows (SKIP LOCKED: never waits), then their wallet rows in wallet id
-- order, the order transfers lock wallets in.
-- Raises: WT500 isolation_level_unsupported.
CREATE OR REPLACE FUNCTION wallet.settle_due_deposits(p_limit integer DEFAULT 100)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_transaction wallet.transactions;
    v_posted      integer := 0;
BEGIN
    PERFORM wallet.require_read_committed();
    PERFORM set_config('synchronous_commit', 'on', true);
    FOR v_transaction IN
        SELECT * FROM wallet.transactions
        WHERE status = 'scheduled' AND available_at <= now()
        ORDER BY wallet_id, id
        LIMIT least(p_limit, 1000)
        FOR UPDATE SKIP LOCKED
    LOOP
        IF (wallet.settlement_blocker(v_transaction)).errcode IS NULL THEN
            PERFORM wallet.post_scheduled_deposit(v_transaction);
            v_posted := v_posted + 1;
        END IF;
    END LOOP;
    RETURN v_posted;
END
$$;

REVOKE ALL ON FUNCTION wallet.settle_due_deposits(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.settle_due_deposits(integer) TO wallet_app;
