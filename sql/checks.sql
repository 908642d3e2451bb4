-- Input checks shared by the functions that take a request. Each raises WI400
-- invalid_request with a message naming the field; the tables' CHECK constraints say
-- the same again as a safety net.

-- wallet.check_metadata: a JSON object of at most 4096 bytes.
-- Raises: WI400 invalid_request.
CREATE OR REPLACE FUNCTION wallet.check_metadata(p_metadata jsonb)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF jsonb_typeof(p_metadata) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'metadata must be a JSON object';
    END IF;
    IF octet_length(p_metadata::text) > 4096 THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'metadata must be at most 4096 bytes of JSON';
    END IF;
END
$$;

-- wallet.check_movement_request: amount 1..10^15, reference 1..255 characters or NULL,
-- metadata as wallet.check_metadata says.
-- Raises: WI400 invalid_request.
CREATE OR REPLACE FUNCTION wallet.check_movement_request(p_amount bigint, p_reference text, p_metadata jsonb)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_amount IS NULL OR p_amount NOT BETWEEN 1 AND wallet.max_amount() THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'amount must be an integer from 1 to 10^15';
    END IF;
    IF length(p_reference) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'reference must be 1 to 255 characters';
    END IF;
    PERFORM wallet.check_metadata(p_metadata);
END
$$;

REVOKE ALL ON FUNCTION wallet.check_metadata(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.check_movement_request(bigint, text, jsonb) FROM PUBLIC;
