-- Idempotency keys (SPEC 6), decided inside the same transaction as the movement.
--
-- wallet.claim_idempotency_key inserts (caller_id, key). If another transaction holds
-- the same key uncommitted, the insert waits for it: concurrent requests with one key
-- execute once. Afterwards:
--   * the key is new: returns NULL and the caller goes on (its row is rolled back with
--     everything else if the caller fails, so only successful requests are remembered);
--   * the key was used for the same request (same fingerprint and operation):
--     returns the first response, which the caller returns with replayed = true;
--   * the key was used for another request: raises WK409 idempotency_key_reused.
-- p_response is the response when it is known before the work (money movements);
-- otherwise NULL, and wallet.record_idempotent_response sets it before commit.
-- A NULL key means the request is not idempotent: nothing is stored.
-- Raises: WI400 invalid_request (malformed key or caller), WK409 idempotency_key_reused.
CREATE OR REPLACE FUNCTION wallet.claim_idempotency_key(
    p_caller_id   text,
    p_key         text,
    p_operation   text,
    p_fingerprint text,
    p_response    jsonb DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_stored wallet.idempotency_keys;
BEGIN
    IF p_key IS NULL THEN
        RETURN NULL;
    END IF;
    IF length(p_key) NOT BETWEEN 1 AND 255 OR p_key !~ '^[ -~]+$' THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400',
            MESSAGE = 'Idempotency-Key must be 1 to 255 printable ASCII characters';
    END IF;
    IF p_caller_id IS NULL OR length(p_caller_id) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400',
            MESSAGE = 'an idempotency key needs a caller id of 1 to 255 characters';
    END IF;
    IF p_fingerprint IS NULL OR length(p_fingerprint) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400',
            MESSAGE = 'an idempotency key needs a request fingerprint of 1 to 255 characters';
    END IF;

    INSERT INTO wallet.idempotency_keys (caller_id, key, operation, fingerprint, response)
    VALUES (p_caller_id, p_key, p_operation, p_fingerprint, p_response)
    ON CONFLICT (caller_id, key) DO NOTHING;
    IF FOUND THEN
        RETURN NULL;
    END IF;

    SELECT * INTO STRICT v_stored
    FROM wallet.idempotency_keys
    WHERE caller_id = p_caller_id AND key = p_key;

    IF v_stored.operation <> p_operation OR v_stored.fingerprint <> p_fingerprint THEN
        RAISE EXCEPTION USING ERRCODE = 'WK409',
            MESSAGE = 'this Idempotency-Key was already used for a different request',
            DETAIL = format('first used at %s', v_stored.created_at);
    END IF;
    RETURN v_stored.response;
END
$$;

-- wallet.record_idempotent_response: the response of a request whose key this
-- transaction claimed without knowing the response yet. Does nothing for a NULL key.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.record_idempotent_response(
    p_caller_id text,
    p_key       text,
    p_response  jsonb
) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_key IS NOT NULL THEN
        UPDATE wallet.idempotency_keys SET response = p_response
        WHERE caller_id = p_caller_id AND key = p_key;
    END IF;
END
$$;

-- wallet.prune_idempotency_keys: forget keys older than p_older_than (at least 24 hours,
-- SPEC 6). Returns how many were removed. Run periodically by the job worker.
-- Raises: WI400 invalid_request (p_older_than under 24 hours).
CREATE OR REPLACE FUNCTION wallet.prune_idempotency_keys(p_older_than interval DEFAULT interval '48 hours')
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_removed bigint;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '24 hours' THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400',
            MESSAGE = 'idempotency keys are kept at least 24 hours';
    END IF;
    DELETE FROM wallet.idempotency_keys WHERE created_at < now() - p_older_than;
    GET DIAGNOSTICS v_removed = ROW_COUNT;
    RETURN v_removed;
END
$$;

REVOKE ALL ON FUNCTION wallet.claim_idempotency_key(text, text, text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.record_idempotent_response(text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.prune_idempotency_keys(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.prune_idempotency_keys(interval) TO wallet_app;
