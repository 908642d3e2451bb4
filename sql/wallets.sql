-- Wallets: open, read, list, and the status changes freeze, unfreeze and close.
--
-- A wallet's owner_id and currency never change. p_acting_owner_id is the owner a
-- caller is limited to (a token's owner_id claim; NULL for a service caller): a wallet
-- of another owner is reported as not found (WN404), never as forbidden.

-- wallet.to_wallet_result: the API's view of a wallet row. available is what may be spent:
-- the balance less what active holds reserve (held = balance - available).
-- Each attribute is set by name, never built positionally (ROW(...)::wallet.wallet_result):
-- a later release may then add an attribute to the type (held, say) and still roll back to
-- this one, whose body, re-applied, leaves the new attribute NULL instead of failing every
-- call. (The previous release builds it positionally, which is why this one adds none.)
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.to_wallet_result(p_wallet wallet.wallets, p_replayed boolean)
RETURNS wallet.wallet_result
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_result wallet.wallet_result;
BEGIN
    v_result.id         := p_wallet.id;
    v_result.owner_id   := p_wallet.owner_id;
    v_result.currency   := p_wallet.currency;
    v_result.status     := p_wallet.status;
    v_result.balance    := p_wallet.balance;
    v_result.available  := p_wallet.balance - p_wallet.held;
    v_result.pending    := p_wallet.pending;
    v_result.metadata   := p_wallet.metadata;
    v_result.created_at := p_wallet.created_at;
    v_result.updated_at := p_wallet.updated_at;
    v_result.replayed   := p_replayed;
    RETURN v_result;
END
$$;

-- wallet.replayed_wallet: a stored first response, returned again.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.replayed_wallet(p_response jsonb)
RETURNS wallet.wallet_result
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    RETURN jsonb_populate_record(NULL::wallet.wallet_result, p_response || '{"replayed": true}');
END
$$;

-- wallet.open_wallet: a new active wallet with a zero balance, its hash chain started at
-- its genesis (see chain.sql). Locks nothing.
-- Raises: WI400 invalid_request (owner_id, currency or metadata malformed),
--         WK409 idempotency_key_reused.
CREATE OR REPLACE FUNCTION wallet.open_wallet(
    p_caller_id       text,
    p_idempotency_key text,
    p_fingerprint     text,
    p_owner_id        text,
    p_currency        text DEFAULT 'IRR',
    p_metadata        jsonb DEFAULT '{}'
) RETURNS wallet.wallet_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_currency text := coalesce(p_currency, 'IRR');
    v_metadata jsonb := coalesce(p_metadata, '{}');
    v_replay   jsonb;
    v_wallet   wallet.wallets;
BEGIN
    IF p_owner_id IS NULL OR length(p_owner_id) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'owner_id must be 1 to 255 characters';
    END IF;
    IF v_currency !~ '^[A-Z]{3}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'currency must be three upper-case letters';
    END IF;
    PERFORM wallet.check_metadata(v_metadata);

    v_replay := wallet.claim_idempotency_key(p_caller_id, p_idempotency_key, 'open_wallet', p_fingerprint);
    IF v_replay IS NOT NULL THEN
        RETURN wallet.replayed_wallet(v_replay);
    END IF;

    v_wallet.id         := wallet.uuid_v7();
    v_wallet.created_at := now();
    INSERT INTO wallet.wallets (id, owner_id, currency, metadata, created_at, updated_at, chain_hash)
    VALUES (v_wallet.id, p_owner_id, v_currency, v_metadata, v_wallet.created_at, v_wallet.created_at,
            wallet.chain_genesis(v_wallet.id, p_owner_id, v_currency, v_wallet.created_at))
    RETURNING * INTO v_wallet;

    PERFORM wallet.record_idempotent_response(p_caller_id, p_idempotency_key,
                                              to_jsonb(wallet.to_wallet_result(v_wallet, false)));
    RETURN wallet.to_wallet_result(v_wallet, false);
END
$$;

-- wallet.get_wallet: one wallet. Locks nothing.
-- Raises: WN404 not_found (unknown, or another owner's).
CREATE OR REPLACE FUNCTION wallet.get_wallet(p_acting_owner_id text, p_wallet_id uuid)
RETURNS wallet.wallet_result
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN wallet.to_wallet_result(wallet.find_wallet(p_acting_owner_id, p_wallet_id), false);
END
$$;

-- wallet.list_wallets: a keyset page of wallets in id order (ids are time-ordered, so
-- oldest first), optionally of one owner; p_after_id is the last id of the previous page.
-- At most 1000 rows a call (the API's pages are 1..500; it asks one more to see if a
-- next page exists).
-- Raises: WI400 invalid_request (limit outside 1..1000).
CREATE OR REPLACE FUNCTION wallet.list_wallets(
    p_owner_id text,
    p_limit    integer DEFAULT 50,
    p_after_id uuid DEFAULT NULL
) RETURNS SETOF wallet.wallet_result
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'limit must be 1 to 1000';
    END IF;
    RETURN QUERY
        SELECT (wallet.to_wallet_result(w, false)).*
        FROM wallet.wallets AS w
        WHERE (p_owner_id IS NULL OR w.owner_id = p_owner_id)
          AND (p_after_id IS NULL OR w.id > p_after_id)
        ORDER BY w.id
        LIMIT p_limit;
END
$$;

-- wallet.change_wallet_status: the one place a wallet's status changes; each change is a
-- link of the wallet's hash chain (see chain.sql).
-- Order: find the wallet and check its owner (so a replay never shows another owner's
-- wallet), claim the idempotency key, then lock and change it.
-- Locks: the wallet row (FOR NO KEY UPDATE). A change to the status it already has
-- succeeds and changes nothing. Closed is final; only an empty wallet may close (no
-- balance, no pending deposits, nothing held by active holds).
-- Raises: WI400 invalid_request (a malformed idempotency key), WN404 not_found,
--         WS409 wallet_not_active (freezing or unfreezing a closed wallet),
--         WE409 wallet_not_empty (closing with a balance, pending deposits or held money),
--         WK409 idempotency_key_reused, WT500 isolation_level_unsupported.
CREATE OR REPLACE FUNCTION wallet.change_wallet_status(
    p_caller_id        text,
    p_idempotency_key  text,
    p_fingerprint      text,
    p_acting_owner_id  text,
    p_wallet_id        uuid,
    p_status           text
) RETURNS wallet.wallet_result
LANGUAGE plpgsql
AS $$
DECLARE
    v_operation text := CASE p_status WHEN 'frozen' THEN 'freeze_wallet'
                                      WHEN 'active' THEN 'unfreeze_wallet'
                                      WHEN 'closed' THEN 'close_wallet' END;
    v_replay    jsonb;
    v_wallet    wallet.wallets;
BEGIN
    PERFORM wallet.require_read_committed();
    PERFORM wallet.find_wallet(p_acting_owner_id, p_wallet_id);
    v_replay := wallet.claim_idempotency_key(p_caller_id, p_idempotency_key, v_operation, p_fingerprint);
    IF v_replay IS NOT NULL THEN
        RETURN wallet.replayed_wallet(v_replay);
    END IF;

    SELECT * INTO STRICT v_wallet FROM wallet.wallets WHERE id = p_wallet_id FOR NO KEY UPDATE;
    IF v_wallet.status <> p_status THEN
        IF v_wallet.status = 'closed' THEN
            RAISE EXCEPTION USING ERRCODE = 'WS409', MESSAGE = 'wallet is closed',
                DETAIL = format('wallet %s', p_wallet_id);
        END IF;
        IF p_status = 'closed' AND (v_wallet.balance <> 0 OR v_wallet.pending <> 0 OR v_wallet.held <> 0) THEN
            RAISE EXCEPTION USING ERRCODE = 'WE409', MESSAGE = 'only an empty wallet can be closed',
                DETAIL = format('wallet %s has balance %s (%s held) and pending %s',
                                p_wallet_id, v_wallet.balance, v_wallet.held, v_wallet.pending);
        END IF;
        v_wallet := wallet.append_status_link(p_wallet_id, 'wallet_' || p_status, NULL, 0,
                                              p_require_active => false, p_status => p_status);
    END IF;

    PERFORM wallet.record_idempotent_response(p_caller_id, p_idempotency_key,
                                              to_jsonb(wallet.to_wallet_result(v_wallet, false)));
    RETURN wallet.to_wallet_result(v_wallet, false);
END
$$;

-- wallet.freeze_wallet: no money moves in or out of the wallet until it is unfrozen
-- (wallet.change_wallet_status to frozen).
-- Raises: WI400 invalid_request (a malformed idempotency key), WN404 not_found,
--         WS409 wallet_not_active (the wallet is closed), WK409 idempotency_key_reused,
--         WT500 isolation_level_unsupported.
CREATE OR REPLACE FUNCTION wallet.freeze_wallet(
    p_caller_id text, p_idempotency_key text, p_fingerprint text, p_acting_owner_id text, p_wallet_id uuid
) RETURNS wallet.wallet_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN wallet.change_wallet_status(p_caller_id, p_idempotency_key, p_fingerprint,
                                       p_acting_owner_id, p_wallet_id, 'frozen');
END
$$;

-- wallet.unfreeze_wallet: a frozen wallet becomes active again (wallet.change_wallet_status).
-- Raises: WI400 invalid_request (a malformed idempotency key), WN404 not_found,
--         WS409 wallet_not_active (the wallet is closed), WK409 idempotency_key_reused,
--         WT500 isolation_level_unsupported.
CREATE OR REPLACE FUNCTION wallet.unfreeze_wallet(
    p_caller_id text, p_idempotency_key text, p_fingerprint text, p_acting_owner_id text, p_wallet_id uuid
) RETURNS wallet.wallet_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN wallet.change_wallet_status(p_caller_id, p_idempotency_key, p_fingerprint,
                                       p_acting_owner_id, p_wallet_id, 'active');
END
$$;

-- wallet.close_wallet: an empty wallet closes for good (wallet.change_wallet_status).
-- Raises: WI400 invalid_request (a malformed idempotency key), WN404 not_found,
--         WE409 wallet_not_empty (a balance, pending deposits or held money), WK409 idempotency_key_reused,
--         WT500 isolation_level_unsupported.
CREATE OR REPLACE FUNCTION wallet.close_wallet(
    p_caller_id text, p_idempotency_key text, p_fingerprint text, p_acting_owner_id text, p_wallet_id uuid
) RETURNS wallet.wallet_result
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN wallet.change_wallet_status(p_caller_id, p_idempotency_key, p_fingerprint,
                                       p_acting_owner_id, p_wallet_id, 'closed');
END
$$;

REVOKE ALL ON FUNCTION wallet.to_wallet_result(wallet.wallets, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.replayed_wallet(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.change_wallet_status(text, text, text, text, uuid, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.open_wallet(text, text, text, text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.get_wallet(text, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.list_wallets(text, integer, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.freeze_wallet(text, text, text, text, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.unfreeze_wallet(text, text, text, text, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.close_wallet(text, text, text, text, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.open_wallet(text, text, text, text, text, jsonb) TO wallet_app;
GRANT EXECUTE ON FUNCTION wallet.get_wallet(text, uuid) TO wallet_app, wallet_auditor;
GRANT EXECUTE ON FUNCTION wallet.list_wallets(text, integer, uuid) TO wallet_app, wallet_auditor;
GRANT EXECUTE ON FUNCTION wallet.freeze_wallet(text, text, text, text, uuid) TO wallet_app;
GRANT EXECUTE ON FUNCTION wallet.unfreeze_wallet(text, text, text, text, uuid) TO wallet_app;
GRANT EXECUTE ON FUNCTION wallet.close_wallet(text, text, text, text, uuid) TO wallet_app;
