-- wallet.settle_deposit: settling one delayed deposit (SPEC 5), and the two steps it shares
-- with wallet.settle_due_deposits (sql/settle_due_deposits.sql): why a due deposit cannot be
-- posted now (wallet.settlement_blocker), and posting it (wallet.post_scheduled_deposit).
--
-- A delayed deposit is scheduled by wallet.deposit with a future available_at
-- (sql/deposit.sql), then settled exactly once by a procrastinate job, or canceled, or failed:
--
--   scheduled --settle--> posted            (balance += net, pending -= net)
--   scheduled --cancel--> canceled          (pending -= net; sql/cancel_deposit.sql)
--   scheduled --settle, wallet not active, retries spent--> failed   (pending -= net;
--                                                        sql/fail_scheduled_deposit.sql)
--
-- Every transition locks the transaction row first (FOR UPDATE), then the wallet row:
-- a settle racing a cancel, or two deliveries of one job, serialise on the transaction
-- row and the second sees the first's outcome. Movements lock only wallet rows, so the
-- order transaction -> wallet can never form a cycle.
--
-- Settlement jobs are enqueued, deleted and reconciled by sql/settlement_jobs.sql.

-- wallet.settlement_blocker: why the due deposit p_transaction (its row locked by the
-- caller) cannot be posted now, as the SQLSTATE a settlement attempt raises and a reason
-- for humans; both NULL when it can be posted:
--   WS409 wallet_not_active: the wallet is frozen or closed;
--   WL422 balance_limit_exceeded: the credit would take it past 10^18.
-- Locks: the wallet row (FOR NO KEY UPDATE), held until the caller's transaction ends.
-- Raises: nothing (it returns the SQLSTATE for its caller to raise).
CREATE OR REPLACE FUNCTION wallet.settlement_blocker(
    p_transaction wallet.transactions,
    OUT errcode   text,
    OUT reason    text
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_wallet wallet.wallets;
BEGIN
    SELECT * INTO STRICT v_wallet FROM wallet.wallets WHERE id = p_transaction.wallet_id FOR NO KEY UPDATE;
    IF v_wallet.status <> 'active' THEN
        errcode := 'WS409';
        reason  := format('wallet %s was %s', v_wallet.id, v_wallet.status);
    ELSIF v_wallet.balance + (p_transaction.amount - p_transaction.fee) > wallet.max_balance() THEN
        errcode := 'WL422';
        reason  := format('wallet %s would exceed the maximum balance of 10^18', v_wallet.id);
    END IF;
END
$$;

REVOKE ALL ON FUNCTION wallet.settlement_blocker(wallet.transactions) FROM PUBLIC;

-- wallet.post_scheduled_deposit: post the due deposit p_transaction, whose row and wallet
-- row the caller has locked and checked (wallet.settlement_blocker): balance += net,
-- pending -= net, the chain link, the entries, status posted.
-- Raises: nothing (its caller has checked the wallet with wallet.settlement_blocker).
CREATE OR REPLACE FUNCTION wallet.post_scheduled_deposit(p_transaction wallet.transactions)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_net_amount bigint := p_transaction.amount - p_transaction.fee;
    v_after      wallet.wallet_link;
BEGIN
    UPDATE wallet.transactions SET status = 'posted', posted_at = now() WHERE id = p_transaction.id;
    v_after := wallet.apply_to_wallet(p_transaction.wallet_id, v_net_amount,
                   wallet.transaction_digest(p_transaction,
                       wallet.expected_legs('deposit', p_transaction.wallet_id, NULL, NULL,
                                            p_transaction.amount, p_transaction.fee)),
                   p_pending_change => -v_net_amount);
    INSERT INTO wallet.entries (transaction_id, wallet_id, account, currency, kind, net_amount,
                                balance_before, balance_after, chain_version, chain_hash, created_at)
    SELECT p_transaction.id, leg.wallet_id, leg.account, p_transaction.currency, 'deposit', leg.net_amount,
           leg.balance_after - leg.net_amount, leg.balance_after, leg.chain_version, leg.chain_hash, v_after.updated_at
    FROM (VALUES (NULL::uuid, 'world', -p_transaction.amount, NULL::bigint, NULL::bigint, NULL::bytea),
                 (NULL, 'revenue', p_transaction.fee, NULL, NULL, NULL),
                 (p_transaction.wallet_id, NULL, v_net_amount, v_after.balance, v_after.chain_version,
                  v_after.chain_hash))
         AS leg (wallet_id, account, net_amount, balance_after, chain_version, chain_hash)
    WHERE leg.net_amount <> 0;
END
$$;

REVOKE ALL ON FUNCTION wallet.post_scheduled_deposit(wallet.transactions) FROM PUBLIC;

-- wallet.settle_deposit: post a due scheduled deposit. Called by its settlement job;
-- safe to call any number of times (only the first call that finds it scheduled and due
-- posts it). Returns the outcome: 'posted', 'not_due', or the status it already had
-- ('posted', 'canceled', 'failed').
-- When the deposit cannot be posted (wallet.settlement_blocker): raises WS409 or WL422
-- so the job retries later; on the last attempt (p_last_attempt) the deposit becomes
-- 'failed' instead, its pending released, and 'failed' is returned.
-- In the same transaction (also when its own deposit was already posted) it posts up to
-- p_sweep_limit other due deposits that nobody else is settling: when many fall due at
-- once, the first jobs post them all and the rest find them posted. Each job still
-- guarantees its own deposit.
-- Locks: the deposit's row (FOR UPDATE, before any wallet), the swept deposits' rows (SKIP
-- LOCKED: never waits), then the wallet rows of all of them in wallet id order, its own
-- deposit's wallet in its place among them. So, like a transfer, it never waits for a
-- lower wallet id while holding a higher one (tests/sql/test_deadlocks.py).
-- Raises: WN404 not_found (no such deposit), WS409 wallet_not_active or
--         WL422 balance_limit_exceeded (to be retried), WT500 isolation_level_unsupported.
CREATE OR REPLACE FUNCTION wallet.settle_deposit(
    p_transaction_id uuid,
    p_last_attempt   boolean DEFAULT false,
    p_sweep_limit    integer DEFAULT 0
) RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_transaction wallet.transactions;
    v_due         wallet.transactions;
    v_blocker     record;
    v_status      text;
    v_outcome     text;
BEGIN
    PERFORM wallet.require_read_committed();
    -- Money is posted durably, whatever the caller's session says (the worker's queue
    -- bookkeeping runs with synchronous_commit off).
    PERFORM set_config('synchronous_commit', 'on', true);
    SELECT * INTO v_transaction
    FROM wallet.transactions
    WHERE id = p_transaction_id AND kind = 'deposit'
    FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'WN404', MESSAGE = 'deposit not found',
            DETAIL = format('transaction %s', p_transaction_id);
    END IF;
    IF v_transaction.status <> 'scheduled' THEN
        -- Posted by another job's sweep (or canceled): sweep on, the others are due too.
        IF p_sweep_limit > 0 THEN
            PERFORM wallet.settle_due_deposits(p_sweep_limit);
        END IF;
        RETURN v_transaction.status;
    END IF;
    IF v_transaction.available_at > now() THEN
        RETURN 'not_due';
    END IF;
    -- A wallet seen frozen or closed: retry later, without sweeping for nothing (the sweep
    -- would roll back with the raise). Read without a lock; the locked check below decides.
    SELECT status INTO v_status FROM wallet.wallets WHERE id = v_transaction.wallet_id;
    IF v_status <> 'active' AND NOT p_last_attempt THEN
        RAISE EXCEPTION USING ERRCODE = 'WS409',
            MESSAGE = format('wallet %s was %s; settlement will be retried', v_transaction.wallet_id, v_status),
            DETAIL = format('deposit %s', p_transaction_id);
    END IF;

    FOR v_due IN
        WITH swept AS (
            SELECT * FROM wallet.transactions
            WHERE status = 'scheduled' AND available_at <= now() AND id <> p_transaction_id
            ORDER BY wallet_id, id
            LIMIT greatest(least(p_sweep_limit, 1000), 0)
            FOR UPDATE SKIP LOCKED
        )
        SELECT * FROM swept
        UNION ALL
        SELECT * FROM wallet.transactions WHERE id = p_transaction_id
        ORDER BY wallet_id, id
    LOOP
        v_blocker := wallet.settlement_blocker(v_due);
        IF v_due.id = p_transaction_id THEN
            IF v_blocker.errcode IS NULL THEN
                PERFORM wallet.post_scheduled_deposit(v_due);
                v_outcome := 'posted';
            ELSIF p_last_attempt THEN
                PERFORM wallet.fail_scheduled_deposit(v_due, v_blocker.reason);
                v_outcome := 'failed';
            ELSE
                RAISE EXCEPTION USING ERRCODE = v_blocker.errcode,
                    MESSAGE = v_blocker.reason || '; settlement will be retried',
                    DETAIL = format('deposit %s', p_transaction_id);
            END IF;
        ELSIF v_blocker.errcode IS NULL THEN
            PERFORM wallet.post_scheduled_deposit(v_due);
        END IF;
    END LOOP;
    RETURN v_outcome;
END
$$;

REVOKE ALL ON FUNCTION wallet.settle_deposit(uuid, boolean, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.settle_deposit(uuid, boolean, integer) TO wallet_app;
