-- Holds (authorizations): place, void, read, list, and the helpers that capture and expiry
-- share. Capturing is sql/capture_hold.sql; expiry and its jobs are sql/hold_expiry.sql.
--
-- A hold reserves part of a wallet's available money: the wallet's held grows by its amount,
-- so available (balance - held) shrinks while the balance stays. No money moves and no fee is
-- charged until a capture, which posts a withdrawal or a transfer drawing on the hold. The
-- hold's life:
--
--   active --capture (partial)--> active          remaining -= amount, captured_amount += amount
--   active --capture, nothing left or final--> captured   the rest released
--   active --void--> voided                               remaining released
--   active --expire_hold, at expires_at--> expired        remaining released
--
-- Every change of a hold locks its row first (FOR UPDATE), then its wallet rows in wallet id
-- order, as settlement and cancel lock a deposit: a capture racing a void or the expiry
-- serialises on the hold row and the second sees the first's outcome. Movements lock only
-- wallet rows, so the order hold -> wallet never forms a cycle. Placing locks the wallet
-- only (the hold is new).
--
-- Holds are not links of the wallet's hash chain and not items of its history: they move
-- no money. wallet.verify_ledger checks that each wallet's held is the sum of its active
-- holds' remaining (held_differs_from_holds) and each hold's captured_amount the sum of its
-- captures (hold_captures_differ).

-- wallet.to_hold_result: the API's view of a hold row, each attribute set by name (see
-- wallet.to_wallet_result for why).
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.to_hold_result(p_hold wallet.holds, p_replayed boolean)
RETURNS wallet.hold_result
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_result wallet.hold_result;
BEGIN
    v_result.id              := p_hold.id;
    v_result.wallet_id       := p_hold.wallet_id;
    v_result.status          := p_hold.status;
    v_result.amount          := p_hold.amount;
    v_result.captured_amount := p_hold.captured_amount;
    v_result.remaining       := p_hold.remaining;
    v_result.reference       := p_hold.reference;
    v_result.metadata        := p_hold.metadata;
    v_result.expires_at      := p_hold.expires_at;
    v_result.created_at      := p_hold.created_at;
    v_result.closed_at       := p_hold.closed_at;
    v_result.replayed        := p_replayed;
    RETURN v_result;
END
$$;

-- wallet.replayed_hold: a stored first response, returned again.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.replayed_hold(p_response jsonb)
RETURNS wallet.hold_result
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    RETURN jsonb_populate_record(NULL::wallet.hold_result, p_response || '{"replayed": true}');
END
$$;

-- wallet.find_hold: a hold read without a lock, if p_acting_owner_id (NULL: any) owns its
-- wallet.
-- Raises: WN404 not_found (it does not exist, or is on another owner's wallet).
CREATE OR REPLACE FUNCTION wallet.find_hold(p_acting_owner_id text, p_hold_id uuid)
RETURNS wallet.holds
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_hold wallet.holds;
BEGIN
    SELECT h.* INTO v_hold
    FROM wallet.holds AS h
    JOIN wallet.wallets AS w ON w.id = h.wallet_id
    WHERE h.id = p_hold_id AND w.owner_id = coalesce(p_acting_owner_id, w.owner_id);
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'WN404', MESSAGE = 'hold not found',
            DETAIL = format('hold %s', p_hold_id);
    END IF;
    RETURN v_hold;
END
$$;

-- wallet.release_from_hold: the active hold p_hold, whose row the caller has locked (and read
-- after locking it), gives p_captured_amount (0 for a void or an expiry) to a capture, and
-- with p_close_as ('captured', 'voided' or 'expired') closes, releasing what it still
-- reserves. The wallet's held falls by all the hold gave up; a closed hold's waiting expiry
-- job is deleted. The wallet's balance, chain and updated_at do not change: the caller posts
-- a capture's money itself.
-- Locks: the wallet row (by its UPDATE, unless the caller holds it already).
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.release_from_hold(
    p_hold            wallet.holds,
    p_captured_amount bigint,
    p_close_as        text
) RETURNS wallet.holds
LANGUAGE plpgsql
AS $$
DECLARE
    v_given_up bigint := CASE WHEN p_close_as IS NULL THEN p_captured_amount ELSE p_hold.remaining END;
    v_hold     wallet.holds;
BEGIN
    UPDATE wallet.holds
    SET captured_amount = captured_amount + p_captured_amount,
        remaining       = remaining - v_given_up,
        status          = coalesce(p_close_as, status),
        closed_at       = CASE WHEN p_close_as IS NOT NULL THEN now() END
    WHERE id = p_hold.id
    RETURNING * INTO STRICT v_hold;
    UPDATE wallet.wallets SET held = held - v_given_up WHERE id = p_hold.wallet_id;
    IF p_close_as IS NOT NULL THEN
        PERFORM wallet.delete_hold_expiry_job(p_hold.id);
    END IF;
    RETURN v_hold;
END
$$;

-- wallet.place_hold: reserve p_amount of a wallet's available money until p_expires_at
-- (NULL: 7 days from now; at least a second and at most 366 days ahead), and enqueue, in the
-- same transaction, the job that expires it then (sql/hold_expiry.sql).
-- Order: validate, read the wallet (owner never changes, so no lock), claim the idempotency
-- key, then lock the wallet and reserve in one UPDATE (checked on the newest row version
-- after any wait, as wallet.apply_to_wallet checks a debit), write the hold and its job.
-- Locks: the wallet row.
-- Raises: WI400 invalid_request, WN404 not_found, WS409 wallet_not_active (frozen or closed),
--         WF422 insufficient_funds (available below the amount), WK409 idempotency_key_reused,
--         WT500 isolation_level_unsupported.
CREATE OR REPLACE FUNCTION wallet.place_hold(
    p_caller_id       text,
    p_idempotency_key text,
    p_fingerprint     text,
    p_acting_owner_id text,
    p_wallet_id       uuid,
    p_amount          bigint,
    p_expires_at      timestamptz DEFAULT NULL,
    p_reference       text DEFAULT NULL,
    p_metadata        jsonb DEFAULT '{}'
) RETURNS wallet.hold_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_expires_at timestamptz := coalesce(p_expires_at, now() + interval '7 days');
    v_wallet     wallet.wallets;
    v_hold       wallet.holds;
    v_replay     jsonb;
BEGIN
    PERFORM wallet.require_read_committed();
    PERFORM wallet.check_movement_request(p_amount, p_reference, coalesce(p_metadata, '{}'));
    -- Absolute durations, as the table's CHECK expires_within_bounds measures them.
    IF NOT isfinite(v_expires_at) THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'expires_at must be a finite time';
    END IF;
    IF v_expires_at - now() < interval '1 second' THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'expires_at must be at least a second ahead';
    END IF;
    IF v_expires_at - now() > interval '366 days' THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'expires_at must be at most 366 days ahead';
    END IF;
    v_wallet := wallet.find_wallet(p_acting_owner_id, p_wallet_id);

    v_hold.id              := wallet.uuid_v7();
    v_hold.wallet_id       := p_wallet_id;
    v_hold.status          := 'active';
    v_hold.amount          := p_amount;
    v_hold.captured_amount := 0;
    v_hold.remaining       := p_amount;
    v_hold.reference       := p_reference;
    v_hold.metadata        := coalesce(p_metadata, '{}');
    v_hold.expires_at      := v_expires_at;
    v_hold.created_at      := now();
    v_hold.created_by      := p_caller_id;

    v_replay := wallet.claim_idempotency_key(p_caller_id, p_idempotency_key, 'place_hold', p_fingerprint,
                                             to_jsonb(wallet.to_hold_result(v_hold, false)));
    IF v_replay IS NOT NULL THEN
        RETURN wallet.replayed_hold(v_replay);
    END IF;

    LOOP
        UPDATE wallet.wallets
        SET held = held + p_amount
        WHERE id = p_wallet_id AND status = 'active' AND balance - held >= p_amount;
        EXIT WHEN FOUND;

        -- As in wallet.apply_to_wallet: say why from the row locked as it is now, or go round.
        SELECT * INTO STRICT v_wallet FROM wallet.wallets WHERE id = p_wallet_id FOR NO KEY UPDATE;
        IF v_wallet.status <> 'active' THEN
            RAISE EXCEPTION USING ERRCODE = 'WS409', MESSAGE = format('wallet is %s', v_wallet.status),
                DETAIL = format('wallet %s', p_wallet_id);
        END IF;
        IF v_wallet.balance - v_wallet.held < p_amount THEN
            RAISE EXCEPTION USING ERRCODE = 'WF422', MESSAGE = 'insufficient funds',
                DETAIL = format('wallet %s has %s available (%s held), %s needed',
                                p_wallet_id, v_wallet.balance - v_wallet.held, v_wallet.held, p_amount);
        END IF;
    END LOOP;
    INSERT INTO wallet.holds VALUES (v_hold.*);
    PERFORM wallet.enqueue_hold_expiry(v_hold.id, v_expires_at);
    RETURN wallet.to_hold_result(v_hold, false);
END
$$;

-- wallet.void_hold: release what an active hold still reserves; it becomes voided (what it
-- captured before stays captured). Works on a frozen wallet: releasing moves no money.
-- Order: find the hold and check its owner (so a replay never shows another owner's hold),
-- claim the idempotency key, then lock and change it.
-- Locks: the hold row, then the wallet row.
-- Raises: WI400 invalid_request (a malformed idempotency key), WN404 not_found (unknown, or
--         another owner's), WH409 hold_not_active (captured, voided or expired already),
--         WK409 idempotency_key_reused, WT500 isolation_level_unsupported.
CREATE OR REPLACE FUNCTION wallet.void_hold(
    p_caller_id       text,
    p_idempotency_key text,
    p_fingerprint     text,
    p_acting_owner_id text,
    p_hold_id         uuid
) RETURNS wallet.hold_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_hold   wallet.holds;
    v_replay jsonb;
BEGIN
    PERFORM wallet.require_read_committed();
    PERFORM wallet.find_hold(p_acting_owner_id, p_hold_id);
    v_replay := wallet.claim_idempotency_key(p_caller_id, p_idempotency_key, 'void_hold', p_fingerprint);
    IF v_replay IS NOT NULL THEN
        RETURN wallet.replayed_hold(v_replay);
    END IF;

    SELECT * INTO STRICT v_hold FROM wallet.holds WHERE id = p_hold_id FOR UPDATE;
    IF v_hold.status <> 'active' THEN
        RAISE EXCEPTION USING ERRCODE = 'WH409', MESSAGE = format('the hold is %s', v_hold.status),
            DETAIL = format('hold %s', p_hold_id);
    END IF;
    v_hold := wallet.release_from_hold(v_hold, 0, 'voided');

    PERFORM wallet.record_idempotent_response(p_caller_id, p_idempotency_key,
                                              to_jsonb(wallet.to_hold_result(v_hold, false)));
    RETURN wallet.to_hold_result(v_hold, false);
END
$$;

-- wallet.get_hold: one hold. Locks nothing.
-- Raises: WN404 not_found (unknown, or on another owner's wallet).
CREATE OR REPLACE FUNCTION wallet.get_hold(p_acting_owner_id text, p_hold_id uuid)
RETURNS wallet.hold_result
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN wallet.to_hold_result(wallet.find_hold(p_acting_owner_id, p_hold_id), false);
END
$$;

-- wallet.list_holds: a keyset page of a wallet's holds, newest first, optionally of one
-- status; p_before_id is the last id of the previous page. Hold ids are time-ordered
-- (wallet.uuid_v7: milliseconds first), so id order is placing order (holds placed within one
-- millisecond in a fixed, arbitrary order), and the id alone is the cursor.
-- Each status is one range of holds_wallet_status_idx (wallet_id, status, id DESC): the page
-- takes the newest p_limit of each status asked for, then the newest p_limit of those, so a
-- page reads at most four short index ranges however deep its cursor.
-- At most 501 rows a call (the API's pages are 1..500; it asks one more to see if a next
-- page exists). Locks nothing.
-- Raises: WI400 invalid_request (limit outside 1..501, unknown status), WN404 not_found.
CREATE OR REPLACE FUNCTION wallet.list_holds(
    p_acting_owner_id text,
    p_wallet_id       uuid,
    p_status          text DEFAULT NULL,
    p_limit           integer DEFAULT 50,
    p_before_id       uuid DEFAULT NULL
) RETURNS SETOF wallet.hold_result
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_statuses text[] := ARRAY['active', 'captured', 'voided', 'expired'];
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 501 THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'limit must be 1 to 501';
    END IF;
    IF p_status IS NOT NULL AND NOT p_status = ANY (v_statuses) THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400',
            MESSAGE = format('status must be one of %s', array_to_string(v_statuses, ', '));
    END IF;
    PERFORM wallet.find_wallet(p_acting_owner_id, p_wallet_id);

    RETURN QUERY
        SELECT result.*
        FROM (SELECT newest.hold
              FROM unnest(CASE WHEN p_status IS NULL THEN v_statuses ELSE ARRAY[p_status] END) AS s (status)
              CROSS JOIN LATERAL (
                  SELECT h AS hold
                  FROM wallet.holds AS h
                  WHERE h.wallet_id = p_wallet_id
                    AND h.status = s.status
                    AND h.id < coalesce(p_before_id, 'ffffffff-ffff-ffff-ffff-ffffffffffff')
                  ORDER BY h.id DESC
                  LIMIT p_limit) AS newest
              ORDER BY (newest.hold).id DESC
              LIMIT p_limit) AS page
        CROSS JOIN LATERAL wallet.to_hold_result(page.hold, false) AS result
        ORDER BY result.id DESC;
END
$$;

REVOKE ALL ON FUNCTION wallet.to_hold_result(wallet.holds, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.replayed_hold(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.find_hold(text, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.release_from_hold(wallet.holds, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.place_hold(text, text, text, text, uuid, bigint, timestamptz, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.void_hold(text, text, text, text, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.get_hold(text, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.list_holds(text, uuid, text, integer, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.place_hold(text, text, text, text, uuid, bigint, timestamptz, text, jsonb)
    TO wallet_app;
GRANT EXECUTE ON FUNCTION wallet.void_hold(text, text, text, text, uuid) TO wallet_app;
GRANT EXECUTE ON FUNCTION wallet.get_hold(text, uuid) TO wallet_app, wallet_auditor;
GRANT EXECUTE ON FUNCTION wallet.list_holds(text, uuid, text, integer, uuid) TO wallet_app, wallet_auditor;
