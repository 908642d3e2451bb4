-- wallet.commission_fee: the fee formula of SPEC 5, and nothing else.
--
--   fee = clamp(fixed + round_half_up(amount * rate_bps / 10000), min_fee, max_fee)
--
-- amount * rate_bps can reach 10^19, past bigint, so the product is split:
-- amount = 10000 * whole + rest, and only rest * rate_bps (< 10^8) is ever rounded.
-- max_fee NULL means no cap. Pure integer arithmetic: no numeric, no floats.
-- PL/pgSQL rather than SQL here and in the other small helpers: PL/pgSQL plans its
-- statements once per session.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.commission_fee(
    p_amount   bigint,
    p_rate_bps integer,
    p_fixed    bigint,
    p_min_fee  bigint,
    p_max_fee  bigint
) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN greatest(
        p_min_fee,
        least(
            coalesce(p_max_fee, 9223372036854775807),
            p_fixed + (p_amount / 10000) * p_rate_bps + ((p_amount % 10000) * p_rate_bps + 5000) / 10000
        )
    );
END
$$;

-- Internal (see sql/posting.sql): the ledger's functions call it; nobody else may.
REVOKE ALL ON FUNCTION wallet.commission_fee(bigint, integer, bigint, bigint, bigint)
    FROM PUBLIC, wallet_app, wallet_auditor;
