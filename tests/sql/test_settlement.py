"""wallet.settle_deposit called directly, as its job calls it: every outcome, and the SQLSTATE
each blocker raises so that the job retries (tests/jobs drive the same through a real worker)."""

from __future__ import annotations

import uuid

import psycopg

from tests.support.ledger import (
    MAX_AMOUNT,
    change_status,
    funded_wallet,
    new_wallet,
    one,
    raises_sqlstate,
    rows,
    scalar,
    wait_until_due,
)

MAX_BALANCE = 10**18
# The nearest a deposit may be scheduled: within a second of now it is an instant deposit.
LEAD_SECONDS = 1.2


def schedule(db: psycopg.Connection, wallet_id: uuid.UUID, amount: int) -> uuid.UUID:
    deposit = one(
        db,
        "SELECT * FROM wallet.deposit('svc', NULL, NULL, NULL, %s::uuid, %s::bigint, NULL, NULL,"
        " now() + make_interval(secs => %s))",
        wallet_id,
        amount,
        LEAD_SECONDS,
    )
    assert deposit["status"] == "scheduled", deposit
    return deposit["id"]


def settle(db: psycopg.Connection, deposit_id: uuid.UUID, *, last_attempt: bool = False) -> str:
    return scalar(db, "SELECT wallet.settle_deposit(%s, %s, 0)", deposit_id, last_attempt)


def state(db: psycopg.Connection, deposit_id: uuid.UUID) -> tuple:
    return tuple(
        one(
            db,
            "SELECT t.status, t.failure_reason IS NOT NULL AS has_reason, w.balance, w.pending"
            " FROM wallet.transactions AS t JOIN wallet.wallets AS w ON w.id = t.wallet_id WHERE t.id = %s",
            deposit_id,
        ).values()
    )


def test_settle_deposit_posts_once_and_only_when_due(db):
    wallet_id = funded_wallet(db, 1_000)
    deposit_id = schedule(db, wallet_id, 5_000)

    early = settle(db, deposit_id)
    before = state(db, deposit_id)
    wait_until_due(db, deposit_id)
    first, second = settle(db, deposit_id), settle(db, deposit_id)

    assert (early, before) == ("not_due", ("scheduled", False, 1_000, 5_000))
    assert (first, second) == ("posted", "posted")
    assert state(db, deposit_id) == ("posted", False, 6_000, 0)
    assert rows(db, "SELECT * FROM wallet.verify_ledger()") == []


def test_a_frozen_wallet_raises_wallet_not_active_until_the_last_attempt(db):
    # (A closed wallet cannot hold a scheduled deposit: closing needs pending = 0.)
    wallet_id = new_wallet(db)
    deposit_id = schedule(db, wallet_id, 5_000)
    change_status(db, "freeze", wallet_id)
    wait_until_due(db, deposit_id)

    with raises_sqlstate("WS409"):
        settle(db, deposit_id)
    retried = state(db, deposit_id)
    last = settle(db, deposit_id, last_attempt=True)

    assert retried == ("scheduled", False, 0, 5_000)
    assert (last, state(db, deposit_id)) == ("failed", ("failed", True, 0, 0))
    assert settle(db, deposit_id) == "failed"
    assert rows(db, "SELECT * FROM wallet.verify_ledger()") == []


def test_a_credit_past_the_maximum_balance_raises_balance_limit_exceeded(db):
    wallet_id = new_wallet(db)
    deposit_id = schedule(db, wallet_id, 1)
    # Fill the wallet to exactly 10^18 with real deposits, after scheduling the one of 1.
    filled = scalar(
        db,
        "SELECT count(wallet.deposit('svc', NULL, NULL, NULL, %s::uuid, %s::bigint))"
        " FROM generate_series(1, %s)",
        wallet_id,
        MAX_AMOUNT,
        MAX_BALANCE // MAX_AMOUNT,
    )
    wait_until_due(db, deposit_id)

    with raises_sqlstate("WL422"):
        settle(db, deposit_id)
    retried = state(db, deposit_id)
    last = settle(db, deposit_id, last_attempt=True)

    assert filled == MAX_BALANCE // MAX_AMOUNT
    assert retried == ("scheduled", False, MAX_BALANCE, 1)
    assert (last, state(db, deposit_id)) == ("failed", ("failed", True, MAX_BALANCE, 0))
    assert rows(db, "SELECT * FROM wallet.verify_ledger()") == []
