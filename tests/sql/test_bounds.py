"""The bounds on money are named once, in sql/bounds.sql: wallet.max_amount() (one movement,
and each fee part of a commission rule) and wallet.max_balance() (a wallet's balance, and its
pending deposits). The copies that cannot call them (the CHECK constraints of the frozen
migration 0001, the API's schema constants) are read back and compared, and both sides of
each bound are tried through the ledger's functions with the values the functions return."""

from __future__ import annotations

import re

import psycopg
import pytest

from api.schemas import MAX_AMOUNT as API_MAX_AMOUNT
from api.schemas import MAX_FEE_SETTING as API_MAX_FEE_SETTING
from core.migrate import sql_files
from tests.support.ledger import (
    MAX_AMOUNT as TEST_MAX_AMOUNT,
)
from tests.support.ledger import (
    deposit,
    get_wallet,
    ledger_state,
    new_wallet,
    one,
    raises_sqlstate,
    scalar,
    set_rule,
    transfer,
    wait_until_due,
    withdraw,
)


def max_amount(db: psycopg.Connection) -> int:
    return scalar(db, "SELECT wallet.max_amount()")


def max_balance(db: psycopg.Connection) -> int:
    return scalar(db, "SELECT wallet.max_balance()")


# --- the copies that cannot call them -----------------------------------------------------

# A one-column CHECK as PostgreSQL prints it back: CHECK (((x >= 0) AND (x <= '10...'::bigint))).
RANGE_CHECK = re.compile(r"CHECK \(\(\((\w+) >= (\d+)\) AND \(\1 <= '?(\d+)'?(?:::bigint)?\)\)\)")

DOMAIN_CHECKS = """
    SELECT pg_get_constraintdef(c.oid) AS definition
    FROM pg_constraint AS c
    WHERE c.contypid = %s::regtype AND c.contype = 'c'
"""
COLUMN_CHECKS = """
    SELECT pg_get_constraintdef(c.oid) AS definition
    FROM pg_constraint AS c
    JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
    WHERE c.conrelid = %s::regclass AND c.contype = 'c' AND a.attname = %s AND cardinality(c.conkey) = 1
"""


def _range(db: psycopg.Connection, query: str, *params: str) -> tuple[int, int]:
    """The (low, high) of the one range CHECK on a domain or column."""
    definitions = [row[0] for row in db.execute(query, params).fetchall()]
    assert len(definitions) == 1, (params, definitions)
    match = RANGE_CHECK.fullmatch(definitions[0])
    assert match, definitions[0]
    return int(match[2]), int(match[3])


def test_the_constraints_of_migration_0001_say_the_bounds_sql_names(db):
    amount, balance = max_amount(db), max_balance(db)

    checks = {
        "domain wallet.amount": _range(db, DOMAIN_CHECKS, "wallet.amount"),
        "wallets.balance": _range(db, COLUMN_CHECKS, "wallet.wallets", "balance"),
        "wallets.pending": _range(db, COLUMN_CHECKS, "wallet.wallets", "pending"),
        "commission_rules.fixed": _range(db, COLUMN_CHECKS, "wallet.commission_rules", "fixed"),
        "commission_rules.min_fee": _range(db, COLUMN_CHECKS, "wallet.commission_rules", "min_fee"),
        "commission_rules.max_fee": _range(db, COLUMN_CHECKS, "wallet.commission_rules", "max_fee"),
        # A fee is a rule's fixed part plus its rate part (at most 100% of the amount), each
        # at most max_amount (tests/sql/test_commission.py reaches it).
        "domain wallet.fee": _range(db, DOMAIN_CHECKS, "wallet.fee"),
    }

    assert checks == {
        "domain wallet.amount": (1, amount),
        "wallets.balance": (0, balance),
        "wallets.pending": (0, balance),
        "commission_rules.fixed": (0, amount),
        "commission_rules.min_fee": (0, amount),
        "commission_rules.max_fee": (0, amount),
        "domain wallet.fee": (0, 2 * amount),
    }


def test_the_api_and_the_test_helpers_say_the_bounds_sql_names(db):
    amount = max_amount(db)

    assert {API_MAX_AMOUNT, API_MAX_FEE_SETTING, TEST_MAX_AMOUNT} == {amount}
    # Every sum of a balance and a credit stays far inside bigint.
    assert max_balance(db) + 2 * amount < 2**63 - 1


def test_the_bounds_file_is_applied_first():
    # So that a LANGUAGE sql function anywhere in sql/ may use them: its body is checked
    # when it is created.
    assert sql_files()[0].name == "bounds.sql"


def test_the_bounds_are_folded_into_a_plan_as_constants(db):
    # What makes them free: IMMUTABLE without arguments, so the planner evaluates each once
    # per plan, and PL/pgSQL keeps its plans for the session.
    volatility = {
        row[0]: row[1]
        for row in db.execute(
            "SELECT proname, provolatile FROM pg_proc"
            " WHERE pronamespace = 'wallet'::regnamespace AND proname IN ('max_amount', 'max_balance')"
        ).fetchall()
    }
    plan = "\n".join(
        row[0]
        for row in db.execute(
            "EXPLAIN (VERBOSE) SELECT g FROM generate_series(1, 3) AS g"
            " WHERE g < wallet.max_balance() AND g < wallet.max_amount()"
        ).fetchall()
    )

    assert volatility == {"max_amount": "i", "max_balance": "i"}
    assert "max_" not in plan
    assert f"'{max_balance(db)}'::bigint" in plan and f"'{max_amount(db)}'::bigint" in plan


# --- both sides, through the functions ----------------------------------------------------


def test_a_movement_of_max_amount_is_valid_and_one_more_is_not(db):
    amount = max_amount(db)
    source, target = new_wallet(db, "source"), new_wallet(db, "target")

    assert deposit(db, source, amount)["amount"] == amount
    assert transfer(db, source, target, amount)["amount"] == amount
    assert withdraw(db, target, amount)["amount"] == amount
    deposit(db, source, amount)
    before = ledger_state(db)
    for name, call in {
        "deposit": lambda: deposit(db, source, amount + 1),
        "withdraw": lambda: withdraw(db, source, amount + 1),
        "transfer": lambda: transfer(db, source, target, amount + 1),
    }.items():
        with raises_sqlstate("WI400", name):
            call()
    assert ledger_state(db) == before


@pytest.mark.parametrize("part", ["fixed", "min_fee", "max_fee"])
def test_a_fee_part_of_max_amount_is_valid_and_one_more_is_not(db, part):
    amount = max_amount(db)
    # min_fee may not be above max_fee: the other one is at the bound too.
    at_bound = {"fixed": 0, "min_fee": amount, "max_fee": amount, part: amount}

    rule = set_rule(db, "deposit", **at_bound)
    with raises_sqlstate("WI400"):
        set_rule(db, "withdrawal", **{**at_bound, part: amount + 1})

    assert rule[part] == amount


def _fill(db: psycopg.Connection, wallet_id, total: int, available_at: str = "NULL") -> None:
    """Deposits of max_amount (and one of the rest), scheduled for available_at (an SQL
    expression; NULL: posted now), until they add up to total."""
    amount = max_amount(db)
    call = f"wallet.deposit('svc', NULL, NULL, NULL, %s::uuid, %s::bigint, NULL, '{{}}', {available_at})"
    db.execute(f"SELECT {call} FROM generate_series(1, %s)", (wallet_id, amount, total // amount))
    if total % amount:
        db.execute(f"SELECT {call}", (wallet_id, total % amount))


def test_a_balance_reaches_max_balance_and_no_credit_takes_it_further(db):
    balance = max_balance(db)
    full, other = new_wallet(db, "full"), new_wallet(db, "other")
    deposit(db, other, 10)
    _fill(db, full, balance - 1)

    deposit(db, full, 1)
    before = ledger_state(db)
    with raises_sqlstate("WL422", "deposit"):
        deposit(db, full, 1)
    with raises_sqlstate("WL422", "transfer"):
        transfer(db, other, full, 1)
    assert ledger_state(db) == before
    withdraw(db, full, 1)
    transfer(db, other, full, 1)

    assert get_wallet(db, full)["balance"] == balance


def test_pending_deposits_reach_max_balance_and_no_further(db):
    balance = max_balance(db)
    wallet_id = new_wallet(db)
    _fill(db, wallet_id, balance, "now() + interval '1 hour'")

    before = ledger_state(db)
    with raises_sqlstate("WL422"):
        _fill(db, wallet_id, 1, "now() + interval '1 hour'")

    assert ledger_state(db) == before
    assert get_wallet(db, wallet_id)["pending"] == balance


def test_a_settlement_reaches_max_balance_and_the_next_one_waits(db):
    balance = max_balance(db)
    wallet_id = new_wallet(db)
    scheduled = [
        one(
            db,
            "SELECT id FROM wallet.deposit('svc', NULL, NULL, NULL, %s::uuid, 1::bigint, NULL, NULL,"
            " now() + interval '1.2 seconds')",
            wallet_id,
        )["id"]
        for _ in range(2)
    ]
    _fill(db, wallet_id, balance - 1)
    wait_until_due(db, *scheduled)

    first = scalar(db, "SELECT wallet.settle_deposit(%s, false, 0)", scheduled[0])
    with raises_sqlstate("WL422"):
        scalar(db, "SELECT wallet.settle_deposit(%s, false, 0)", scheduled[1])

    assert first == "posted"
    assert (get_wallet(db, wallet_id)["balance"], get_wallet(db, wallet_id)["pending"]) == (balance, 1)
