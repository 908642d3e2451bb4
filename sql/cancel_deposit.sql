-- wallet.cancel_deposit: cancel a scheduled deposit before it settles; its pending is
-- released and its settlement job deleted (sql/settle_deposit.sql has the lifecycle of a
-- delayed deposit).
-- Order: find the deposit and check its owner (so a replay never shows another owner's
-- deposit), claim the idempotency key, then lock and change it.
-- Locks: the transaction row, then the wallet row.
-- Raises: WI400 invalid_request (a malformed idempotency key), WN404 not_found (unknown, or
--         another owner's), WC409 transaction_not_cancelable (not a deposit, or not scheduled
--         any more), WK409 idempotency_key_reused, WT500 isolation_level_unsupported.
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
    PERFORM wallet.require_read_committed();
    SELECT * INTO v_transaction FROM wallet.transactions WHERE id = p_transaction_id;
    IF NOT FOUND OR NOT EXISTS (
        SELECT FROM wallet.wallets
        WHERE id IN (v_transaction.wallet_id, v_transaction.from_wallet_id, v_transaction.to_wallet_id)
          AND owner_id = coalesce(p_acting_owner_id, owner_id))
    THEN
        RAISE EXCEPTION USING ERRCODE = 'WN404', MESSAGE = 'transaction not found',
            DETAIL = format('transaction %s', p_transaction_id);
    END IF;

    v_replay := wallet.claim_idempotency_key(p_caller_id, p_idempotency_key, 'cancel_deposit', p_fingerprint);
    IF v_replay IS NOT NULL THEN
        RETURN wallet.replayed_transaction(v_replay);
    END IF;

    SELECT * INTO v_transaction FROM wallet.transactions WHERE id = p_transaction_id FOR UPDATE;
    IF v_transaction.status <> 'scheduled' THEN
        RAISE EXCEPTION USING ERRCODE = 'WC409', MESSAGE = 'only a scheduled deposit can be canceled',
            DETAIL = format('transaction %s is a %s %s', p_transaction_id, v_transaction.status, v_transaction.kind);
    END IF;

    PERFORM wallet.append_status_link(v_transaction.wallet_id, 'deposit_canceled', v_transaction,
                                      -(v_transaction.amount - v_transaction.fee), p_require_active => false);
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

REVOKE ALL ON FUNCTION wallet.cancel_deposit(text, text, text, text, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.cancel_deposit(text, text, text, text, uuid) TO wallet_app;
