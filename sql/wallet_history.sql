-- wallet.wallet_history_v2: a keyset page of a wallet's history, newest first, each item with
-- the hold a capture drew on (hold_id: a capture is its withdrawal or transfer; NULL for
-- every other item). wallet.wallet_history, below, is the same page without hold_id.
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
--
-- How a page stays index-backed, whatever the filters and however deep the cursor:
-- entries_history_idx is (wallet_id, kind, created_at DESC, id DESC), and within one
-- wallet entries are in the same order by created_at as by id (sql/posting.sql stamps
-- them after the wallet lock). So for each kind (the one asked for, or every kind of
-- wallet.transaction_kinds()) the page's candidates are the first p_limit rows of one
-- index range: since <= created_at < until, and no later than the cursor's time
-- (wallet.history_cursor_at). The newest p_limit of those candidates are joined to their
-- transactions. Unposted deposits are read by kind too, newest seq first, from
-- transactions_unposted_history_idx (wallet_id, kind, history_seq DESC, created_at):
-- their created_at does not follow their seq (a cancellation draws a new seq), so with
-- since/until the scan steps over the wallet's unposted deposits outside the bounds, but
-- inside the index (a hundred or so per index page), never reading their rows.
-- Raises: WI400 invalid_request (limit outside 1..1000, unknown kind, since after until),
--         WN404 not_found.
CREATE OR REPLACE FUNCTION wallet.wallet_history_v2(
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
    reference      text,
    hold_id        uuid
)
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_before    bigint      := coalesce(p_before_seq, 9223372036854775807);
    v_since     timestamptz := coalesce(p_since, '-infinity');
    v_until     timestamptz := coalesce(p_until, 'infinity');
    v_kinds     text[]      := CASE WHEN p_kind IS NULL THEN wallet.transaction_kinds() ELSE ARRAY[p_kind] END;
    v_cursor_at timestamptz := 'infinity';
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'limit must be 1 to 1000';
    END IF;
    IF p_kind IS NOT NULL AND NOT p_kind = ANY (wallet.transaction_kinds()) THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400',
            MESSAGE = format('kind must be one of %s', array_to_string(wallet.transaction_kinds(), ', '));
    END IF;
    IF v_since > v_until THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'since must not be after until';
    END IF;
    PERFORM wallet.find_wallet(p_acting_owner_id, p_wallet_id);
    IF p_before_seq IS NOT NULL THEN
        v_cursor_at := wallet.history_cursor_at(p_wallet_id, p_before_seq);
    END IF;

    RETURN QUERY
        SELECT item.*
        FROM (
            (SELECT e.id, e.transaction_id, t.kind::text, t.status::text, e.net_amount,
                    CASE WHEN e.wallet_id = t.to_wallet_id THEN 0 ELSE t.fee END::bigint,
                    e.balance_after, e.created_at, t.reference::text, t.hold_id
             FROM (SELECT newest.*
                   FROM unnest(v_kinds) AS k (kind)
                   CROSS JOIN LATERAL (
                       SELECT e.id, e.transaction_id, e.wallet_id, e.net_amount, e.balance_after, e.created_at
                       FROM wallet.entries AS e
                       WHERE e.wallet_id = p_wallet_id
                         AND e.kind = k.kind
                         AND e.created_at >= v_since AND e.created_at < v_until
                         AND e.created_at <= v_cursor_at
                         AND e.id < v_before
                       ORDER BY e.created_at DESC, e.id DESC
                       LIMIT p_limit) AS newest
                   ORDER BY newest.id DESC
                   LIMIT p_limit) AS e
             JOIN wallet.transactions AS t ON t.id = e.transaction_id)
            UNION ALL
            (SELECT t.history_seq, t.id, t.kind::text, t.status::text, (t.amount - t.fee)::bigint,
                    t.fee::bigint, NULL::bigint, t.created_at, t.reference::text, t.hold_id
             FROM unnest(v_kinds) AS k (kind)
             CROSS JOIN LATERAL (
                 SELECT t.*
                 FROM wallet.transactions AS t
                 WHERE t.wallet_id = p_wallet_id
                   AND t.kind = k.kind
                   AND t.status <> 'posted'
                   AND t.history_seq < v_before
                   AND t.created_at >= v_since AND t.created_at < v_until
                 ORDER BY t.history_seq DESC
                 LIMIT p_limit) AS t)
        ) AS item (seq, transaction_id, kind, status, amount, fee, balance_after, created_at, reference, hold_id)
        ORDER BY item.seq DESC
        LIMIT p_limit;
END
$$;

-- wallet.wallet_history: wallet.wallet_history_v2's page without hold_id, for the previous
-- release (its signature and result type stay as they were; README, "Upgrades and rolling
-- deploys"). Its one query reads the page from wallet_history_v2, whose own statements stay
-- index-backed (SECURITY DEFINER, as every function wallet_app may call, keeps the planner
-- from inlining this one; nothing is lost, its plan is a scan of v2's rows). Locks nothing.
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
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT item.seq, item.transaction_id, item.kind, item.status, item.amount, item.fee,
           item.balance_after, item.created_at, item.reference
    FROM wallet.wallet_history_v2(p_acting_owner_id, p_wallet_id, p_limit, p_before_seq, p_kind,
                                  p_since, p_until) AS item
    ORDER BY item.seq DESC
$$;

-- wallet.history_cursor_at: a time that no entry of p_wallet_id with an id below
-- p_before_seq is later than, and as close to the newest such entry as a few index probes
-- find: the page after that cursor reads the wallet's index ranges from that time down,
-- with id < p_before_seq still the rule.
-- The cursor is usually the last entry of the page before: its own time is the bound.
-- Otherwise (the seq of an unposted deposit, or of one posted or canceled since the page
-- was read) the entry drawn just before it in the ledger, whatever its wallet, gives a
-- first guess, which is then moved past this wallet's entries drawn before the cursor but
-- stamped after the guess (posted concurrently with that entry, or while the wallet's
-- time ran ahead of the clock): per kind, the entries after the guess up to the first
-- one drawn after the cursor, usually none. Returns -infinity when no entry precedes the
-- cursor. Locks nothing.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.history_cursor_at(p_wallet_id uuid, p_before_seq bigint)
RETURNS timestamptz
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_nearest   record;
    v_entry     record;
    v_kind      text;
    v_cursor_at timestamptz;
BEGIN
    SELECT e.wallet_id, e.created_at INTO v_nearest
    FROM wallet.entries AS e
    WHERE e.id <= p_before_seq
    ORDER BY e.id DESC
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN '-infinity';
    END IF;
    IF v_nearest.wallet_id = p_wallet_id THEN  -- NULL for a system leg
        RETURN v_nearest.created_at;
    END IF;

    v_cursor_at := v_nearest.created_at;
    FOREACH v_kind IN ARRAY wallet.transaction_kinds() LOOP
        FOR v_entry IN
            SELECT e.id, e.created_at
            FROM wallet.entries AS e
            WHERE e.wallet_id = p_wallet_id AND e.kind = v_kind AND e.created_at > v_nearest.created_at
            ORDER BY e.created_at, e.id
        LOOP
            EXIT WHEN v_entry.id >= p_before_seq;
            v_cursor_at := greatest(v_cursor_at, v_entry.created_at);
        END LOOP;
    END LOOP;
    RETURN v_cursor_at;
END
$$;

REVOKE ALL ON FUNCTION wallet.wallet_history(text, uuid, integer, bigint, text, timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.wallet_history_v2(text, uuid, integer, bigint, text, timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.history_cursor_at(uuid, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.wallet_history(text, uuid, integer, bigint, text, timestamptz, timestamptz)
    TO wallet_app, wallet_auditor;
GRANT EXECUTE ON FUNCTION wallet.wallet_history_v2(text, uuid, integer, bigint, text, timestamptz, timestamptz)
    TO wallet_app, wallet_auditor;
