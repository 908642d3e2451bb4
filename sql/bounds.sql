-- The ledger's bounds on money, named once (TigerBeetle's "put a limit on everything"). The
-- functions of sql/ check against these; the CHECK constraints of migrations/0001 (the domain
-- wallet.amount, wallets.balance and .pending, commission_rules.fixed, .min_fee and .max_fee)
-- and api/schemas.py's MAX_AMOUNT say the same numbers again as literals, an applied
-- migration being frozen; tests/sql/test_bounds.py fails when any of them drifts from these.
--
-- Both are SQL functions declared IMMUTABLE without arguments: the planner evaluates them
-- once when it plans a statement that calls them (and PL/pgSQL keeps its plans for the
-- session), so a check against wallet.max_balance() costs what one against the literal did.
-- They pin their search_path like every function others' code could reach (nothing in them
-- resolves a name), so the planner folds them rather than inlines them; folding is enough.
-- This file sorts before every other file of sql/, so a LANGUAGE sql function (whose body is
-- checked when it is created) may use them wherever it lives.

-- wallet.max_amount: the largest amount of one movement, 10^15 rials, and the largest fixed
-- part, minimum and maximum fee of a commission rule.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.max_amount()
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 1000000000000000::bigint
$$;

REVOKE ALL ON FUNCTION wallet.max_amount() FROM PUBLIC;

-- wallet.max_balance: the largest balance, and the largest sum of pending deposits, of one
-- wallet: 10^18 rials, so that no sum of a balance and an amount can pass bigint's 9.2 * 10^18.
-- Raises: nothing.
CREATE OR REPLACE FUNCTION wallet.max_balance()
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 1000000000000000000::bigint
$$;

REVOKE ALL ON FUNCTION wallet.max_balance() FROM PUBLIC;
