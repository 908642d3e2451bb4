-- wallet.withdraw: money from a wallet to the outside world.
--
-- The wallet is debited amount + fee; the outside world receives amount and commission
-- revenue the fee. Nothing changes unless available covers amount + fee.
-- Order: validate, read the wallet (no lock), compute the fee, claim the idempotency
-- key, write the transaction, then lock and debit the wallet and write the entries.
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
    v_debit       bigint;
    v_after       wallet.wallet_link;
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

    INSERT INTO wallet.transactions VALUES (v_transaction.*);
    v_debit := p_amount + v_transaction.fee;
    v_after := wallet.apply_to_wallet(p_wallet_id, -v_debit,
                   wallet.transaction_digest(v_transaction,
                       wallet.expected_legs('withdrawal', p_wallet_id, NULL, NULL, p_amount, v_transaction.fee)));
    INSERT INTO wallet.entries (transaction_id, wallet_id, account, currency, kind, net_amount,
                                balance_before, balance_after, chain_version, chain_hash, created_at)
    SELECT v_transaction.id, leg.wallet_id, leg.account, v_wallet.currency, 'withdrawal', leg.net_amount,
           leg.balance_after - leg.net_amount, leg.balance_after, leg.chain_version, leg.chain_hash, v_after.updated_at
    FROM (VALUES (p_wallet_id, NULL, -v_debit, v_after.balance, v_after.chain_version, v_after.chain_hash),
                 (NULL::uuid, 'world', p_amount, NULL::bigint, NULL::bigint, NULL::bytea),
                 (NULL, 'revenue', v_transaction.fee, NULL, NULL, NULL))
         AS leg (wallet_id, account, net_amount, balance_after, chain_version, chain_hash)
    WHERE leg.net_amount <> 0;
    RETURN wallet.to_transaction_result(v_transaction, false);
END
$$;

REVOKE ALL ON FUNCTION wallet.withdraw(text, text, text, text, uuid, bigint, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.withdraw(text, text, text, text, uuid, bigint, text, jsonb) TO wallet_app;
