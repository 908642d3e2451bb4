-- wallet.get_transaction: one transaction. An owner-limited caller sees it when it
-- touches a wallet of theirs (either side of a transfer). Locks nothing.
-- Raises: WN404 not_found.
CREATE OR REPLACE FUNCTION wallet.get_transaction(p_acting_owner_id text, p_transaction_id uuid)
RETURNS wallet.transaction_result
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_transaction wallet.transactions;
BEGIN
    SELECT * INTO v_transaction FROM wallet.transactions WHERE id = p_transaction_id;
    IF NOT FOUND OR (
        p_acting_owner_id IS NOT NULL
        AND NOT EXISTS (
            SELECT FROM wallet.wallets
            WHERE id IN (v_transaction.wallet_id, v_transaction.from_wallet_id, v_transaction.to_wallet_id)
              AND owner_id = p_acting_owner_id))
    THEN
        RAISE EXCEPTION USING ERRCODE = 'WN404', MESSAGE = 'transaction not found',
            DETAIL = format('transaction %s', p_transaction_id);
    END IF;
    RETURN wallet.to_transaction_result(v_transaction, false);
END
$$;

REVOKE ALL ON FUNCTION wallet.get_transaction(text, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.get_transaction(text, uuid) TO wallet_app, wallet_auditor;
