-- wallet.fail_scheduled_deposit: the deposit p_transaction (its row and wallet row locked
-- by the caller) could not settle at any attempt: status failed, pending released. Called
-- by wallet.settle_deposit on the last attempt (sql/settle_deposit.sql has the lifecycle).
-- Raises: nothing (it does not require the wallet active; the pending only shrinks).
CREATE OR REPLACE FUNCTION wallet.fail_scheduled_deposit(p_transaction wallet.transactions, p_reason text)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM wallet.append_status_link(p_transaction.wallet_id, 'deposit_failed', p_transaction,
                                      -(p_transaction.amount - p_transaction.fee), p_require_active => false);
    UPDATE wallet.transactions
    SET status = 'failed',
        failure_reason = p_reason || ' at every settlement attempt',
        history_seq = nextval('wallet.history_seq')
    WHERE id = p_transaction.id;
END
$$;

REVOKE ALL ON FUNCTION wallet.fail_scheduled_deposit(wallet.transactions, text) FROM PUBLIC;
