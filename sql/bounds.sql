-- The ledger's bounds on money, named once (TigerBeetle's "put a limit on everything"). The
-- functions of sql/ check against these; the CHECK constraints of migrations/0001 (the domain
-- wallet.amount, wallets.balance and .pending, commission_rules.fixed, .min_fee and .max_fee,
-- and the domain wallet.fee at twice max_amount: a fee's fixed part plus its rate part) and
-- api/schemas.py's MAX_AMOUNT say the same numbers again as literals, an applied migration
-- being frozen; tests/sql/test_bounds.py fails when any of them drifts from these.
--
-- Both are declared IMMUTABLE and take no arguments, so the planner replaces a call by its
-- value when it plans the statement (PL/pgSQL keeps its plans for the session): a check
-- against wallet.max_balance() runs as one against the literal did (2,000 transfers on
-- PostgreSQL 15 took the same time, within noise, before and after). They pin their
-- search_path as every function of the schema does but the internal helpers
-- tests/sql/test_ledger_guards.py lists; that keeps the planner from inlining them, not from
-- folding them to constants (tests/sql/test_bounds.py reads a plan).
-- This file sorts before every other file of sql/, so a LANGUAGE sql function (its body is
-- checked when it is created) may use them wherever it lives; keep it first.

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
