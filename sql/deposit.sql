-- wallet.deposit: money from the outside world into a wallet, posted now or scheduled.
--
-- The wallet is credited amount - fee; the fee goes to commission revenue.
-- With p_available_at more than a second ahead (at most 366 days) the deposit is
-- scheduled instead (see sql/settle_deposit.sql): its fee is fixed now, pending grows by
-- amount - fee at once, and its settlement job is enqueued in this same transaction.
-- Order: validate the request, read the wallet (owner and currency never change, so no
-- lock), compute the fee, claim the idempotency key, write the transaction and the
-- scheduled row, and only then lock the wallet: the lock is held for the credit (or the
-- pending change), the entries (or the chain link) and the commit.
-- Locks: the wallet row.
-- Raises: WI400 invalid_request, WN404 not_found, WB422 amount_below_fee,
--         WL422 balance_limit_exceeded (the balance, or for a scheduled deposit the pending,
--         would pass 10^18), WS409 wallet_not_active, WK409 idempotency_key_reused,
--         WT500 isolation_level_unsupported.
CREATE OR REPLACE FUNCTION wallet.deposit(
    p_caller_id       text,
    p_idempotency_key text,
    p_fingerprint     text,
    p_acting_owner_id text,
    p_wallet_id       uuid,
    p_amount          bigint,
    p_reference       text DEFAULT NULL,
    p_metadata        jsonb DEFAULT '{}',
    p_available_at    timestamptz DEFAULT NULL
) RETURNS wallet.transaction_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_wallet      wallet.wallets;
    v_transaction wallet.transactions;
    v_replay      jsonb;
    v_net_amount  bigint;
    v_after       wallet.wallet_link;
    v_scheduled   boolean := p_available_at > now() + interval '1 second';
BEGIN
    PERFORM wallet.require_read_committed();
    PERFORM wallet.check_movement_request(p_amount, p_reference, coalesce(p_metadata, '{}'));
    IF NOT isfinite(p_available_at) THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'available_at must be a finite time';
    END IF;
    IF p_available_at > now() + interval '366 days' THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'available_at must be at most 366 days ahead';
    END IF;
    v_wallet := wallet.find_wallet(p_acting_owner_id, p_wallet_id);

    v_transaction.id         := wallet.uuid_v7();
    v_transaction.kind       := 'deposit';
    v_transaction.status     := CASE WHEN v_scheduled THEN 'scheduled' ELSE 'posted' END;
    v_transaction.wallet_id  := p_wallet_id;
    v_transaction.currency   := v_wallet.currency;
    v_transaction.amount     := p_amount;
    v_transaction.fee        := wallet.compute_fee('deposit', v_wallet.owner_id, p_amount);
    v_transaction.reference  := p_reference;
    v_transaction.metadata   := coalesce(p_metadata, '{}');
    v_transaction.available_at := p_available_at;
    v_transaction.created_at := now();
    v_transaction.posted_at  := CASE WHEN v_scheduled THEN NULL ELSE now() END;
    v_transaction.created_by := p_caller_id;
    IF v_scheduled THEN
        v_transaction.history_seq := nextval('wallet.history_seq');
    END IF;

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
    v_net_amount := p_amount - v_transaction.fee;
    IF v_scheduled THEN
        PERFORM wallet.append_status_link(p_wallet_id, 'deposit_scheduled', v_transaction, v_net_amount,
                                          p_require_active => true);
        PERFORM wallet.enqueue_settlement(v_transaction.id, p_available_at);
        RETURN wallet.to_transaction_result(v_transaction, false);
    END IF;

    v_after := wallet.apply_to_wallet(p_wallet_id, v_net_amount,
                   wallet.transaction_digest(v_transaction,
                       wallet.expected_legs('deposit', p_wallet_id, NULL, NULL, p_amount, v_transaction.fee)));
    INSERT INTO wallet.entries (transaction_id, wallet_id, account, currency, kind, net_amount,
                                balance_before, balance_after, chain_version, chain_hash, created_at)
    SELECT v_transaction.id, leg.wallet_id, leg.account, v_wallet.currency, 'deposit', leg.net_amount,
           leg.balance_after - leg.net_amount, leg.balance_after, leg.chain_version, leg.chain_hash, v_after.updated_at
    FROM (VALUES (NULL::uuid, 'world', -p_amount, NULL::bigint, NULL::bigint, NULL::bytea),
                 (NULL, 'revenue', v_transaction.fee, NULL, NULL, NULL),
                 (p_wallet_id, NULL, v_net_amount, v_after.balance, v_after.chain_version, v_after.chain_hash))
         AS leg (wallet_id, account, net_amount, balance_after, chain_version, chain_hash)
    WHERE leg.net_amount <> 0;
    RETURN wallet.to_transaction_result(v_transaction, false);
END
$$;

REVOKE ALL ON FUNCTION wallet.deposit(text, text, text, text, uuid, bigint, text, jsonb, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.deposit(text, text, text, text, uuid, bigint, text, jsonb, timestamptz) TO wallet_app;
