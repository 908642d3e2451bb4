-- wallet.deposit: money from the outside world into a wallet, posted now.
--
-- The wallet is credited amount - fee; the fee goes to commission revenue.
-- Order: validate the request, read the wallet (owner and currency never change, so no
-- lock), compute the fee, claim the idempotency key, write the transaction and the
-- system legs, and only then lock the wallet: the lock is held for the credit, one
-- entry and the commit.
-- Locks: the wallet row (in wallet.post_wallet_entry).
-- Raises: WI400 invalid_request, WN404 not_found, WB422 amount_below_fee, WL422 balance_limit_exceeded,
--         WS409 wallet_not_active, WK409 idempotency_key_reused.
CREATE OR REPLACE FUNCTION wallet.deposit(
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
    PERFORM wallet.check_movement_request(p_amount, p_reference, coalesce(p_metadata, '{}'));
    v_wallet := wallet.find_wallet(p_acting_owner_id, p_wallet_id);

    v_transaction.id         := wallet.uuid_v7();
    v_transaction.kind       := 'deposit';
    v_transaction.status     := 'posted';
    v_transaction.wallet_id  := p_wallet_id;
    v_transaction.currency   := v_wallet.currency;
    v_transaction.amount     := p_amount;
    v_transaction.fee        := wallet.compute_fee('deposit', v_wallet.owner_id, p_amount);
    v_transaction.reference  := p_reference;
    v_transaction.metadata   := coalesce(p_metadata, '{}');
    v_transaction.created_at := now();
    v_transaction.posted_at  := now();
    v_transaction.created_by := p_caller_id;

    v_replay := wallet.claim_idempotency_key(p_caller_id, p_idempotency_key, 'deposit', p_fingerprint,
                                             to_jsonb(wallet.to_transaction_result(v_transaction, false)));
    IF v_replay IS NOT NULL THEN
        RETURN wallet.replayed_transaction(v_replay);
    END IF;

    IF v_transaction.fee >= p_amount THEN
        RAISE EXCEPTION USING ERRCODE = 'WB422', MESSAGE = 'the fee is not below the deposit amount',
            DETAIL = format('amount %s, fee %s', p_amount, v_transaction.fee);
    END IF;

    INSERT INTO wallet.transactions VALUES (v_transaction.*);
    PERFORM wallet.post_system_entries(v_transaction.id, v_wallet.currency,
                                       p_world_net => -p_amount, p_revenue_net => v_transaction.fee);
    PERFORM wallet.post_wallet_entry(v_transaction.id, p_wallet_id, v_wallet.currency,
                                     p_amount - v_transaction.fee);
    RETURN wallet.to_transaction_result(v_transaction, false);
END
$$;

REVOKE ALL ON FUNCTION wallet.deposit(text, text, text, text, uuid, bigint, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.deposit(text, text, text, text, uuid, bigint, text, jsonb) TO wallet_app;
