-- Reading one transaction: wallet.get_transaction, and wallet.get_transaction_v2, which adds
-- the hold a capture drew on. An owner-limited caller sees a transaction when it touches a
-- wallet of theirs (either side of a transfer).

-- wallet.find_transaction: the transaction p_transaction_id, if p_acting_owner_id (NULL: any)
-- may see it. Locks nothing.
-- Raises: WN404 not_found.
CREATE OR REPLACE FUNCTION wallet.find_transaction(p_acting_owner_id text, p_transaction_id uuid)
RETURNS wallet.transactions
LANGUAGE plpgsql STABLE
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
    RETURN v_transaction;
END
$$;

-- wallet.get_transaction: one transaction. Locks nothing.
-- Raises: WN404 not_found.
CREATE OR REPLACE FUNCTION wallet.get_transaction(p_acting_owner_id text, p_transaction_id uuid)
RETURNS wallet.transaction_result
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN wallet.to_transaction_result(wallet.find_transaction(p_acting_owner_id, p_transaction_id), false);
END
$$;

-- wallet.get_transaction_v2: one transaction with the hold a capture drew on (hold_id; NULL
-- for every other transaction). Locks nothing.
-- Raises: WN404 not_found.
CREATE OR REPLACE FUNCTION wallet.get_transaction_v2(p_acting_owner_id text, p_transaction_id uuid)
RETURNS wallet.transaction_result_v2
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN wallet.to_transaction_result_v2(wallet.find_transaction(p_acting_owner_id, p_transaction_id), false);
END
$$;

REVOKE ALL ON FUNCTION wallet.find_transaction(text, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.get_transaction(text, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.get_transaction_v2(text, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.get_transaction(text, uuid) TO wallet_app, wallet_auditor;
GRANT EXECUTE ON FUNCTION wallet.get_transaction_v2(text, uuid) TO wallet_app, wallet_auditor;
