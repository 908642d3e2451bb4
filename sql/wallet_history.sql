-- wallet.wallet_history: a keyset page of a wallet's history, newest first.
--
-- Posted items are the wallet's entries: amount is the signed net effect on the wallet
-- (a transfer's sender sees -(amount + fee)), fee is what this wallet paid, and
-- balance_after is recorded on the entry. Deposits that are scheduled, canceled or
-- failed appear too, with the net amount they would credit and no balance_after; they
-- never count toward the balance. So for every wallet the posted amounts sum to its
-- balance.
-- seq orders the items (posting order within the wallet); pass the last seq of a page
-- as p_before_seq for the next. p_since (inclusive) and p_until (exclusive) bound
-- created_at. Locks nothing.
-- At most 1000 rows a call (the API's pages are 1..500; it asks one more to see if a
-- next page exists).
-- Raises: WI400 invalid_request (limit outside 1..1000, unknown kind, since after until),
--         WN404 not_found.
CREATE OR REPLACE FUNCTION wallet.wallet_history(
    p_acting_owner_id text,
    p_wallet_id       uuid,
    p_limit           integer DEFAULT 50,
    p_before_seq      bigint DEFAULT NULL,
    p_kind            text DEFAULT NULL,
    p_since           timestamptz DEFAULT NULL,
    p_until           timestamptz DEFAULT NULL
) RETURNS TABLE (
    seq            bigint,
    transaction_id uuid,
    kind           text,
    status         text,
    amount         bigint,
    fee            bigint,
    balance_after  bigint,
    created_at     timestamptz,
    reference      text
)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_before bigint      := coalesce(p_before_seq, 9223372036854775807);
    v_since  timestamptz := coalesce(p_since, '-infinity');
    v_until  timestamptz := coalesce(p_until, 'infinity');
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'limit must be 1 to 1000';
    END IF;
    IF p_kind IS NOT NULL AND p_kind NOT IN ('deposit', 'withdrawal', 'transfer') THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'kind must be deposit, withdrawal or transfer';
    END IF;
    IF v_since > v_until THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'since must not be after until';
    END IF;
    PERFORM wallet.find_wallet(p_acting_owner_id, p_wallet_id);

    RETURN QUERY
        SELECT item.*
        FROM (
            (SELECT e.id, e.transaction_id, t.kind::text, t.status::text, e.net_amount,
                    CASE WHEN e.wallet_id = t.to_wallet_id THEN 0 ELSE t.fee END::bigint,
                    e.balance_after, e.created_at, t.reference::text
             FROM wallet.entries AS e
             JOIN wallet.transactions AS t ON t.id = e.transaction_id
             WHERE e.wallet_id = p_wallet_id
               AND e.id < v_before
               AND e.created_at >= v_since AND e.created_at < v_until
               AND (p_kind IS NULL OR t.kind = p_kind)
             ORDER BY e.id DESC
             LIMIT p_limit)
            UNION ALL
            (SELECT t.history_seq, t.id, t.kind::text, t.status::text, (t.amount - t.fee)::bigint,
                    t.fee::bigint, NULL::bigint, t.created_at, t.reference::text
             FROM wallet.transactions AS t
             WHERE t.wallet_id = p_wallet_id
               AND t.status <> 'posted'
               AND t.history_seq < v_before
               AND t.created_at >= v_since AND t.created_at < v_until
               AND (p_kind IS NULL OR t.kind = p_kind)
             ORDER BY t.history_seq DESC
             LIMIT p_limit)
        ) AS item (seq, transaction_id, kind, status, amount, fee, balance_after, created_at, reference)
        ORDER BY item.seq DESC
        LIMIT p_limit;
END
$$;

REVOKE ALL ON FUNCTION wallet.wallet_history(text, uuid, integer, bigint, text, timestamptz, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.wallet_history(text, uuid, integer, bigint, text, timestamptz, timestamptz)
    TO wallet_app, wallet_auditor;
