-- wallet.withdraw: money from a wallet to the outside world.
--
-- The wallet is debited amount + fee; the outside world receives amount and commission
-- revenue the fee. Nothing changes unless available (balance - held) covers amount + fee.
-- Order: validate, read the wallet (no lock), compute the fee, claim the idempotency
-- key, then write the transaction, lock and debit the wallet and write the entries
-- (wallet.post_withdrawal).
-- Locks: the wallet row (in wallet.apply_to_wallet).
-- Raises: WI400 invalid_request, WN404 not_found, WS409 wallet_not_active,
--         WF422 insufficient_funds, WK409 idempotency_key_reused, WT500 isolation_level_unsupported.
CREATE OR REPLACE FUNCTION wallet.withdraw(
    p_caller_id       text,
    p_idempotency_key text,
    p_fingerprint     text,
    p_acting_owner_id text,
    p_wallet_id       uuid,
    p_amount          bigint,
    p_reference       text DEFAULT NULL,
    p_metadata        jsonb DEFAULT '{}'
) RETURNS wallet.transaction_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_wallet      wallet.wallets;
    v_transaction wallet.transactions;
    v_replay      jsonb;
BEGIN
    PERFORM wallet.require_read_committed();
    PERFORM wallet.check_movement_request(p_amount, p_reference, coalesce(p_metadata, '{}'));
    v_wallet := wallet.find_wallet(p_acting_owner_id, p_wallet_id);

    v_transaction.id         := wallet.uuid_v7();
    v_transaction.kind       := 'withdrawal';
    v_transaction.status     := 'posted';
    v_transaction.wallet_id  := p_wallet_id;
    v_transaction.currency   := v_wallet.currency;
    v_transaction.amount     := p_amount;
    v_transaction.fee        := wallet.compute_fee('withdrawal', v_wallet.owner_id, p_amount);
    v_transaction.reference  := p_reference;
    v_transaction.metadata   := coalesce(p_metadata, '{}');
    v_transaction.created_at := now();
    v_transaction.posted_at  := now();
    v_transaction.created_by := p_caller_id;

    v_replay := wallet.claim_idempotency_key(p_caller_id, p_idempotency_key, 'withdraw', p_fingerprint,
                                             to_jsonb(wallet.to_transaction_result(v_transaction, false)));
    IF v_replay IS NOT NULL THEN
        RETURN wallet.replayed_transaction(v_replay);
    END IF;

    PERFORM wallet.post_withdrawal(v_transaction);
    RETURN wallet.to_transaction_result(v_transaction, false);
END
$$;

REVOKE ALL ON FUNCTION wallet.withdraw(text, text, text, text, uuid, bigint, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.withdraw(text, text, text, text, uuid, bigint, text, jsonb) TO wallet_app;
