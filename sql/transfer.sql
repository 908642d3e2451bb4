-- wallet.transfer: money from one wallet to another of the same currency.
--
-- The sender is debited amount + fee, the receiver credited amount, commission revenue
-- the fee (the sender's owner's rule). Nothing changes unless the sender's available
-- (balance - held) covers amount + fee and both wallets are active.
-- Order: validate, read both wallets (no lock), compute the fee, claim the idempotency
-- key, then write the transaction, lock both wallets in id order and write the entries
-- (wallet.post_transfer).
-- Locks: both wallet rows, lower id first, as every function that locks two wallets does,
-- so two opposite transfers wait for each other instead of deadlocking.
-- Raises: WI400 invalid_request, WN404 not_found (either wallet; the sender also when
--         it belongs to another owner), WW422 same_wallet, WM422 currency_mismatch,
--         WS409 wallet_not_active, WF422 insufficient_funds, WL422 balance_limit_exceeded,
--         WK409 idempotency_key_reused, WT500 isolation_level_unsupported.
CREATE OR REPLACE FUNCTION wallet.transfer(
    p_caller_id       text,
    p_idempotency_key text,
    p_fingerprint     text,
    p_acting_owner_id text,
    p_from_wallet_id  uuid,
    p_to_wallet_id    uuid,
    p_amount          bigint,
    p_reference       text DEFAULT NULL,
    p_metadata        jsonb DEFAULT '{}'
) RETURNS wallet.transaction_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_from        wallet.wallets;
    v_to          wallet.wallets;
    v_transaction wallet.transactions;
    v_replay      jsonb;
BEGIN
    PERFORM wallet.require_read_committed();
    PERFORM wallet.check_movement_request(p_amount, p_reference, coalesce(p_metadata, '{}'));
    IF p_from_wallet_id = p_to_wallet_id THEN
        RAISE EXCEPTION USING ERRCODE = 'WW422', MESSAGE = 'cannot transfer to the same wallet';
    END IF;
    v_from := wallet.find_wallet(p_acting_owner_id, p_from_wallet_id);
    v_to   := wallet.find_wallet(NULL, p_to_wallet_id);  -- anyone may receive
    IF v_from.currency <> v_to.currency THEN
        RAISE EXCEPTION USING ERRCODE = 'WM422', MESSAGE = 'the wallets hold different currencies',
            DETAIL = format('%s to %s', v_from.currency, v_to.currency);
    END IF;

    v_transaction.id             := wallet.uuid_v7();
    v_transaction.kind           := 'transfer';
    v_transaction.status         := 'posted';
    v_transaction.from_wallet_id := p_from_wallet_id;
    v_transaction.to_wallet_id   := p_to_wallet_id;
    v_transaction.currency       := v_from.currency;
    v_transaction.amount         := p_amount;
    v_transaction.fee            := wallet.compute_fee('transfer', v_from.owner_id, p_amount);
    v_transaction.reference      := p_reference;
    v_transaction.metadata       := coalesce(p_metadata, '{}');
    v_transaction.created_at     := now();
    v_transaction.posted_at      := now();
    v_transaction.created_by     := p_caller_id;

    v_replay := wallet.claim_idempotency_key(p_caller_id, p_idempotency_key, 'transfer', p_fingerprint,
                                             to_jsonb(wallet.to_transaction_result(v_transaction, false)));
    IF v_replay IS NOT NULL THEN
        RETURN wallet.replayed_transaction(v_replay);
    END IF;

    PERFORM wallet.post_transfer(v_transaction);
    RETURN wallet.to_transaction_result(v_transaction, false);
END
$$;

REVOKE ALL ON FUNCTION wallet.transfer(text, text, text, text, uuid, uuid, bigint, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.transfer(text, text, text, text, uuid, uuid, bigint, text, jsonb) TO wallet_app;
