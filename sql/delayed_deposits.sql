-- Delayed deposits (SPEC 5): scheduled by wallet.deposit with a future available_at,
-- settled exactly once by a procrastinate job, or canceled, or failed.
--
--   scheduled --settle--> posted            (balance += net, pending -= net)
--   scheduled --cancel--> canceled          (pending -= net)
--   scheduled --settle, wallet not active, retries spent--> failed   (pending -= net)
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
    ELSIF v_wallet.balance + (p_transaction.amount - p_transaction.fee) > 1000000000000000000 THEN
        errcode := 'WL422';
        reason  := format('wallet %s would exceed the maximum balance of 10^18', v_wallet.id);
    END IF;
END
$$;

-- wallet.post_scheduled_deposit: post the due deposit p_transaction, whose row and wallet
-- row the caller has locked and checked (wallet.settlement_blocker): balance += net,
-- pending -= net, the entries, status posted.
CREATE OR REPLACE FUNCTION wallet.post_scheduled_deposit(p_transaction wallet.transactions)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_net_amount    bigint := p_transaction.amount - p_transaction.fee;
    v_balance_after bigint;
BEGIN
    UPDATE wallet.transactions SET status = 'posted', posted_at = now() WHERE id = p_transaction.id;
    v_balance_after := wallet.apply_to_wallet(p_transaction.wallet_id, v_net_amount,
                                              p_pending_change => -v_net_amount);
    INSERT INTO wallet.entries (transaction_id, wallet_id, account, currency, net_amount, balance_before, balance_after)
    SELECT p_transaction.id, leg.wallet_id, leg.account, p_transaction.currency, leg.net_amount,
           leg.balance_before, leg.balance_after
    FROM (VALUES (NULL::uuid, 'world', -p_transaction.amount, NULL::bigint, NULL::bigint),
                 (NULL, 'revenue', p_transaction.fee, NULL, NULL),
                 (p_transaction.wallet_id, NULL, v_net_amount, v_balance_after - v_net_amount, v_balance_after))
         AS leg (wallet_id, account, net_amount, balance_before, balance_after)
    WHERE leg.net_amount <> 0;
END
$$;

-- wallet.settle_deposit: post a due scheduled deposit. Called by its settlement job;
-- safe to call any number of times (only the first call that finds it scheduled and due
-- posts it). Returns the outcome: 'posted', 'not_due', or the status it already had
-- ('posted', 'canceled', 'failed').
-- When the deposit cannot be posted (wallet.settlement_blocker): raises WS409 or WL422
-- so the job retries later; on the last attempt (p_last_attempt) the deposit becomes
-- 'failed' instead, its pending released, and 'failed' is returned.
-- Then, in the same transaction (also when its own deposit was already posted), it
-- sweeps up to p_sweep_limit other due deposits (wallet.settle_due_deposits): when many
-- fall due at once, the first jobs post them all and the rest find them posted. Each
-- job still guarantees its own deposit.
-- Locks: the transaction row, then the wallet row.
-- Raises: WN404 not_found (no such deposit), WS409 wallet_not_active or
--         WL422 balance_limit_exceeded (to be retried).
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
    v_blocker     record;
BEGIN
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

    v_blocker := wallet.settlement_blocker(v_transaction);
    IF v_blocker.errcode IS NOT NULL THEN
        IF NOT p_last_attempt THEN
            RAISE EXCEPTION USING ERRCODE = v_blocker.errcode,
                MESSAGE = v_blocker.reason || '; settlement will be retried',
                DETAIL = format('deposit %s', p_transaction_id);
        END IF;
        UPDATE wallet.wallets
        SET pending = pending - (v_transaction.amount - v_transaction.fee), updated_at = now()
        WHERE id = v_transaction.wallet_id;
        UPDATE wallet.transactions
        SET status = 'failed',
            failure_reason = v_blocker.reason || ' at every settlement attempt',
            history_seq = nextval('wallet.history_seq')
        WHERE id = p_transaction_id;
        RETURN 'failed';
    END IF;

    PERFORM wallet.post_scheduled_deposit(v_transaction);
    IF p_sweep_limit > 0 THEN
        PERFORM wallet.settle_due_deposits(p_sweep_limit);
    END IF;
    RETURN 'posted';
END
$$;

-- wallet.settle_due_deposits: post up to p_limit due scheduled deposits that nobody else
-- is settling right now (SKIP LOCKED), leaving any that cannot be posted to their own
-- jobs. Returns how many it posted.
-- Locks: each deposit row, then its wallet row, in wallet id order (the order transfers
-- lock wallets in), so it never deadlocks with them or with itself.
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

-- wallet.cancel_deposit: cancel a scheduled deposit before it settles; its pending is
-- released and its settlement job deleted.
-- Locks: the transaction row, then the wallet row.
-- Raises: WN404 not_found (unknown, or another owner's), WC409 transaction_not_cancelable
--         (not a deposit, or not scheduled any more), WK409 idempotency_key_reused.
CREATE OR REPLACE FUNCTION wallet.cancel_deposit(
    p_caller_id       text,
    p_idempotency_key text,
    p_fingerprint     text,
    p_acting_owner_id text,
    p_transaction_id  uuid
) RETURNS wallet.transaction_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_transaction wallet.transactions;
    v_replay      jsonb;
BEGIN
    v_replay := wallet.claim_idempotency_key(p_caller_id, p_idempotency_key, 'cancel_deposit', p_fingerprint);
    IF v_replay IS NOT NULL THEN
        RETURN wallet.replayed_transaction(v_replay);
    END IF;

    SELECT * INTO v_transaction FROM wallet.transactions WHERE id = p_transaction_id FOR UPDATE;
    IF NOT FOUND OR NOT EXISTS (
        SELECT FROM wallet.wallets
        WHERE id IN (v_transaction.wallet_id, v_transaction.from_wallet_id, v_transaction.to_wallet_id)
          AND owner_id = coalesce(p_acting_owner_id, owner_id))
    THEN
        RAISE EXCEPTION USING ERRCODE = 'WN404', MESSAGE = 'transaction not found',
            DETAIL = format('transaction %s', p_transaction_id);
    END IF;
    IF v_transaction.status <> 'scheduled' THEN
        RAISE EXCEPTION USING ERRCODE = 'WC409', MESSAGE = 'only a scheduled deposit can be canceled',
            DETAIL = format('transaction %s is a %s deposit', p_transaction_id, v_transaction.status);
    END IF;

    UPDATE wallet.wallets
    SET pending = pending - (v_transaction.amount - v_transaction.fee), updated_at = now()
    WHERE id = v_transaction.wallet_id;
    UPDATE wallet.transactions
    SET status = 'canceled', history_seq = nextval('wallet.history_seq')
    WHERE id = p_transaction_id
    RETURNING * INTO v_transaction;

    -- The job would find the deposit canceled and do nothing; deleting it keeps the queue clean.
    PERFORM wallet.delete_settlement_job(p_transaction_id);

    PERFORM wallet.record_idempotent_response(p_caller_id, p_idempotency_key,
                                              to_jsonb(wallet.to_transaction_result(v_transaction, false)));
    RETURN wallet.to_transaction_result(v_transaction, false);
END
$$;

REVOKE ALL ON FUNCTION wallet.settlement_blocker(wallet.transactions) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.post_scheduled_deposit(wallet.transactions) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.settle_deposit(uuid, boolean, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.settle_due_deposits(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.cancel_deposit(text, text, text, text, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.settle_deposit(uuid, boolean, integer) TO wallet_app;
GRANT EXECUTE ON FUNCTION wallet.settle_due_deposits(integer) TO wallet_app;
GRANT EXECUTE ON FUNCTION wallet.cancel_deposit(text, text, text, text, uuid) TO wallet_app;
