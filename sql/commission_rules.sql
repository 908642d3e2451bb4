-- Commission rules (SPEC 5): per operation a default rule (owner_id NULL) and optional
-- per-owner rules for the paying wallet's owner. Rules are appended, never updated: the
-- newest row for (operation, owner_id) is in force, older rows are the history.

-- wallet.compute_fee: the fee the rule in force charges p_owner_id for p_operation of
-- p_amount; 0 when no rule applies. Locks nothing.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.compute_fee(p_operation text, p_owner_id text, p_amount bigint)
RETURNS bigint
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_rule wallet.commission_rules;
BEGIN
    SELECT * INTO v_rule
    FROM wallet.commission_rules
    WHERE operation = p_operation AND owner_id = p_owner_id
    ORDER BY id DESC
    LIMIT 1;
    IF NOT FOUND THEN
        SELECT * INTO v_rule
        FROM wallet.commission_rules
        WHERE operation = p_operation AND owner_id IS NULL
        ORDER BY id DESC
        LIMIT 1;
        IF NOT FOUND THEN
            RETURN 0;
        END IF;
    END IF;
    RETURN wallet.commission_fee(p_amount, v_rule.rate_bps, v_rule.fixed, v_rule.min_fee, v_rule.max_fee);
END
$$;

-- wallet.set_commission_rule: put a rule in force for operations created from now on.
-- Setting the rule already in force changes nothing (PUT is idempotent).
-- Raises: WI400 invalid_request (unknown operation, a bound out of range, min_fee > max_fee).
CREATE OR REPLACE FUNCTION wallet.set_commission_rule(
    p_caller_id text,
    p_operation text,
    p_owner_id  text,
    p_rate_bps  integer,
    p_fixed     bigint,
    p_min_fee   bigint,
    p_max_fee   bigint
) RETURNS wallet.commission_rules
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_current wallet.commission_rules;
    v_rule    wallet.commission_rules;
BEGIN
    IF p_operation IS NULL OR p_operation NOT IN ('deposit', 'withdrawal', 'transfer') THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400',
            MESSAGE = 'operation must be deposit, withdrawal or transfer';
    END IF;
    IF p_owner_id IS NOT NULL AND length(p_owner_id) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'owner_id must be 1 to 255 characters';
    END IF;
    IF p_rate_bps IS NULL OR p_rate_bps NOT BETWEEN 0 AND 10000 THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'rate_bps must be 0 to 10000';
    END IF;
    IF p_fixed IS NULL OR p_fixed NOT BETWEEN 0 AND wallet.max_amount()
       OR p_min_fee IS NULL OR p_min_fee NOT BETWEEN 0 AND wallet.max_amount()
       OR (p_max_fee IS NOT NULL AND p_max_fee NOT BETWEEN 0 AND wallet.max_amount())
    THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400',
            MESSAGE = 'fixed, min_fee and max_fee must be 0 to 10^15 (max_fee may be null)';
    END IF;
    IF p_max_fee < p_min_fee THEN
        RAISE EXCEPTION USING ERRCODE = 'WI400', MESSAGE = 'min_fee must not be above max_fee';
    END IF;

    SELECT * INTO v_current
    FROM wallet.commission_rules
    WHERE operation = p_operation AND owner_id IS NOT DISTINCT FROM p_owner_id
    ORDER BY id DESC
    LIMIT 1;
    IF FOUND AND (v_current.rate_bps, v_current.fixed, v_current.min_fee, v_current.max_fee)
                 IS NOT DISTINCT FROM (p_rate_bps, p_fixed, p_min_fee, p_max_fee) THEN
        RETURN v_current;
    END IF;

    INSERT INTO wallet.commission_rules (operation, owner_id, rate_bps, fixed, min_fee, max_fee, created_by)
    VALUES (p_operation, p_owner_id, p_rate_bps, p_fixed, p_min_fee, p_max_fee, p_caller_id)
    RETURNING * INTO v_rule;
    RETURN v_rule;
END
$$;

-- wallet.commission_rules_in_force: the rule in force per (operation, owner_id).
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.commission_rules_in_force()
RETURNS SETOF wallet.commission_rules
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT DISTINCT ON (operation, owner_id) *
    FROM wallet.commission_rules
    ORDER BY operation, owner_id NULLS FIRST, id DESC
$$;

-- wallet.commission_rules_for_owner: what an owner's token may read (SPEC 3 tenancy): per
-- operation, the rule in force that applies to p_owner_id's operations: its own rule if it
-- has one, else the default (owner_id NULL); no row for an operation without either. Never
-- another owner's rule. The same choice as wallet.compute_fee. Locks nothing.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.commission_rules_for_owner(p_owner_id text)
RETURNS SETOF wallet.commission_rules
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT DISTINCT ON (operation) *
    FROM wallet.commission_rules
    WHERE owner_id = p_owner_id OR owner_id IS NULL
    ORDER BY operation, owner_id IS NULL, id DESC
$$;

-- wallet.commission_rule_history: every rule ever set, newest first, optionally for one
-- operation and one owner (p_owner_id NULL: all owners and the defaults).
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.commission_rule_history(
    p_operation text DEFAULT NULL,
    p_owner_id  text DEFAULT NULL
) RETURNS SETOF wallet.commission_rules
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT *
    FROM wallet.commission_rules
    WHERE (p_operation IS NULL OR operation = p_operation)
      AND (p_owner_id IS NULL OR owner_id = p_owner_id)
    ORDER BY id DESC
$$;

-- Internal (see sql/posting.sql).
REVOKE ALL ON FUNCTION wallet.compute_fee(text, text, bigint) FROM PUBLIC, wallet_app, wallet_auditor;
REVOKE ALL ON FUNCTION wallet.set_commission_rule(text, text, text, integer, bigint, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.commission_rules_in_force() FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.commission_rules_for_owner(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION wallet.commission_rule_history(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION wallet.set_commission_rule(text, text, text, integer, bigint, bigint, bigint) TO wallet_app;
GRANT EXECUTE ON FUNCTION wallet.commission_rules_in_force() TO wallet_app, wallet_auditor;
GRANT EXECUTE ON FUNCTION wallet.commission_rules_for_owner(text) TO wallet_app, wallet_auditor;
GRANT EXECUTE ON FUNCTION wallet.commission_rule_history(text, text) TO wallet_app, wallet_auditor;
