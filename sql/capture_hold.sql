-- wallet.capture_hold: spend p_amount (NULL: all that remains) of an active hold (sql/holds.sql
-- has the hold's life). Without p_to_wallet_id the money leaves to the outside world, a
-- transaction of kind withdrawal; with it, it goes to that wallet (of any owner, in the same
-- currency), a transfer. The transaction carries hold_id and the hold's reference and
-- metadata; it is posted exactly as wallet.withdraw or wallet.transfer posts
-- (wallet.post_withdrawal, wallet.post_transfer): same legs, entries, chain links, history.
--
-- The amount comes out of the hold; the fee (the withdrawal or transfer rule in force for
-- the hold's wallet's owner, for that amount) out of the wallet's available before the
-- capture, never out of the hold. The hold's remaining falls by the amount and its
-- captured_amount rises; when nothing remains, or with p_final, it becomes captured and
-- releases the rest. A hold may be captured in parts until then, but not once its
-- expires_at has passed: it is expiring (wallet.expire_hold) even if its job has not run yet.
-- Order: validate, find the hold (its owner) and the receiver (no lock), claim the
-- idempotency key, then lock the hold, then the wallets in id order, check, and write: the
-- hold's release, then the transaction, debit, credit and entries.
-- Locks: the hold row (FOR UPDATE), then the hold's wallet and the receiver (FOR NO KEY
-- UPDATE), lower wallet id first: the order settlement and cancel take (the object's row,
-- then wallets in id order), so a capture, a void and the expiry of one hold serialise on
-- its row, and no path waits for a lower wallet id while holding a higher one.
-- Raises: WI400 invalid_request (amount outside 1..10^15, a malformed idempotency key),
--         WN404 not_found (the hold, or the receiver; the hold also when it is on another
--         owner's wallet), WW422 same_wallet, WM422 currency_mismatch,
--         WH409 hold_not_active (captured, voided, expired, or past its expires_at),
--         WA422 amount_exceeds_hold, WS409 wallet_not_active (either wallet),
--         WF422 insufficient_funds (the fee is more than available),
--         WL422 balance_limit_exceeded (the receiver), WK409 idempotency_key_reused,
--         WT500 isolation_level_unsupported.
CREATE OR REPLACE FUNCTION wallet.capture_hold(
    p_caller_id       text,
    p_idempotency_key text,
    p_fingerprint     text,
    p_acting_owner_id text,
    p_hold_id         uuid,
    p_amount          bigint DEFAULT NULL,
    p_to_wallet_id    uuid DEFAULT NULL,
    p_final           boolean DEFAULT FALSE
) RETURNS wallet.transaction_result_v2
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_hold        wallet.holds;
    v_from        wallet.wallets;
    v_to          wallet.wallets;
    v_locked      wallet.wallets;
    v_amount      bigint;
    v_transaction wallet.transactions;
    v_replay      jsonb;
BEGIN
    PERFORM wallet.require_read_committed();
    IF p_amount IS NOT NULL AND p_amount NOT BETWEEN 1 AND wallet.max_amount() THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'amount must be an integer from 1 to 10^15';
    END IF;
    v_hold := wallet.find_hold(p_acting_owner_id, p_hold_id);
    IF p_to_wallet_id = v_hold.wallet_id THEN
        RAISE EXCEPTION USING ERRCODE = 'WW422', MESSAGE = 'cannot capture a hold to its own wallet';
    END IF;
    IF p_to_wallet_id IS NOT NULL THEN
        v_from := wallet.find_wallet(NULL, v_hold.wallet_id);
        v_to   := wallet.find_wallet(NULL, p_to_wallet_id);  -- anyone may receive
        IF v_from.currency <> v_to.currency THEN
            RAISE EXCEPTION USING ERRCODE = 'WM422', MESSAGE = 'the wallets hold different currencies',
                DETAIL = format('%s to %s', v_from.currency, v_to.currency);
        END IF;
    END IF;

    v_replay := wallet.claim_idempotency_key(p_caller_id, p_idempotency_key, 'capture_hold', p_fingerprint);
    IF v_replay IS NOT NULL THEN
        RETURN wallet.replayed_transaction_v2(v_replay);
    END IF;

    SELECT * INTO STRICT v_hold FROM wallet.holds WHERE id = p_hold_id FOR UPDATE;
    -- Both wallets locked in id order before anything is checked: the checks then read rows
    -- no one else can change before this transaction ends.
    FOR v_locked IN
        SELECT * FROM wallet.wallets WHERE id IN (v_hold.wallet_id, p_to_wallet_id) ORDER BY id FOR NO KEY UPDATE
    LOOP
        IF v_locked.id = v_hold.wallet_id THEN
            v_from := v_locked;
        ELSE
            v_to := v_locked;
        END IF;
    END LOOP;

    IF v_hold.status <> 'active' THEN
        RAISE EXCEPTION USING ERRCODE = 'WH409', MESSAGE = format('the hold is %s', v_hold.status),
            DETAIL = format('hold %s', p_hold_id);
    END IF;
    IF v_hold.expires_at <= now() THEN
        RAISE EXCEPTION USING ERRCODE = 'WH409', MESSAGE = 'the hold has expired',
            DETAIL = format('hold %s expired at %s; its release is under way', p_hold_id, v_hold.expires_at);
    END IF;
    v_amount := coalesce(p_amount, v_hold.remaining);
    IF v_amount > v_hold.remaining THEN
        RAISE EXCEPTION USING ERRCODE = 'WA422', MESSAGE = 'the amount exceeds what the hold reserves',
            DETAIL = format('hold %s has %s remaining, %s asked', p_hold_id, v_hold.remaining, v_amount);
    END IF;
    IF v_from.status <> 'active' THEN
        RAISE EXCEPTION USING ERRCODE = 'WS409', MESSAGE = format('wallet is %s', v_from.status),
            DETAIL = format('wallet %s', v_from.id);
    END IF;
    IF p_to_wallet_id IS NOT NULL AND v_to.status <> 'active' THEN
        RAISE EXCEPTION USING ERRCODE = 'WS409', MESSAGE = format('wallet is %s', v_to.status),
            DETAIL = format('wallet %s', v_to.id);
    END IF;

    v_transaction.id         := wallet.uuid_v7();
    v_transaction.kind       := CASE WHEN p_to_wallet_id IS NULL THEN 'withdrawal' ELSE 'transfer' END;
    v_transaction.status     := 'posted';
    v_transaction.currency   := v_from.currency;
    v_transaction.amount     := v_amount;
    v_transaction.fee        := wallet.compute_fee(v_transaction.kind, v_from.owner_id, v_amount);
    v_transaction.reference  := v_hold.reference;
    v_transaction.metadata   := v_hold.metadata;
    v_transaction.created_at := now();
    v_transaction.posted_at  := now();
    v_transaction.created_by := p_caller_id;
    v_transaction.hold_id    := p_hold_id;
    IF p_to_wallet_id IS NULL THEN
        v_transaction.wallet_id := v_hold.wallet_id;
    ELSE
        v_transaction.from_wallet_id := v_hold.wallet_id;
        v_transaction.to_wallet_id   := p_to_wallet_id;
    END IF;

    IF v_transaction.fee > v_from.balance - v_from.held THEN
        RAISE EXCEPTION USING ERRCODE = 'WF422', MESSAGE = 'insufficient funds for the fee',
            DETAIL = format('wallet %s has %s available (%s held), the fee is %s',
                            v_from.id, v_from.balance - v_from.held, v_from.held, v_transaction.fee);
    END IF;
    IF p_to_wallet_id IS NOT NULL AND v_to.balance + v_amount > wallet.max_balance() THEN
        RAISE EXCEPTION USING ERRCODE = 'WL422', MESSAGE = 'the wallet would exceed the maximum balance of 10^18',
            DETAIL = format('wallet %s', v_to.id);
    END IF;

    -- The hold gives up its part first: the debit that follows is then covered by available.
    PERFORM wallet.release_from_hold(
        v_hold, v_amount,
        CASE WHEN v_amount = v_hold.remaining OR coalesce(p_final, false) THEN 'captured' END);
    IF p_to_wallet_id IS NULL THEN
        PERFORM wallet.post_withdrawal(v_transaction);
    ELSE
        PERFORM wallet.post_transfer(v_transaction);
    END IF;

    PERFORM wallet.record_idempotent_response(p_caller_id, p_idempotency_key,
                                              to_jsonb(wallet.to_transaction_result_v2(v_transaction, false)));
    RETURN wallet.to_transaction_result_v2(v_transaction, false);
END
$$;

REVOKE ALL ON FUNCTION wallet.capture_hold(text, text, text, text, uuid, bigint, uuid, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.capture_hold(text, text, text, text, uuid, bigint, uuid, boolean) TO wallet_app;
