"""The writing functions state the isolation level they need and refuse any other (issue 9, item 6).

They lock a wallet row and re-check it in one UPDATE, which READ COMMITTED re-evaluates on the
newest row version after a wait. Under REPEATABLE READ the same UPDATE fails with a
serialization error whenever another transaction changed the row first (the audit saw 80% of
hot transfers fail), so they refuse to run there with WT500 isolation_level_unsupported
before touching anything. Reads run under any level.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.support.ledger import funded_wallet, ledger_state, new_wallet, raises_sqlstate, rows, scalar

WRITES = {
    "deposit": "SELECT wallet.deposit('svc', NULL, NULL, NULL, %(a)s, 100)",
    "scheduled deposit": (
        "SELECT wallet.deposit('svc', NULL, NULL, NULL, %(a)s, 100, NULL, '{}', now() + interval '1 hour')"
    ),
    "withdraw": "SELECT wallet.withdraw('svc', NULL, NULL, NULL, %(a)s, 100)",
    "transfer": "SELECT wallet.transfer('svc', NULL, NULL, NULL, %(a)s, %(b)s, 100)",
    "freeze": "SELECT wallet.freeze_wallet('svc', NULL, NULL, NULL, %(a)s)",
    "cancel": "SELECT wallet.cancel_deposit('svc', NULL, NULL, NULL, %(scheduled)s)",
    "settle": "SELECT wallet.settle_deposit(%(scheduled)s, false, 50)",
    "settle due": "SELECT wallet.settle_due_deposits(50)",
}
READS = [
    "SELECT * FROM wallet.get_wallet(NULL, %(a)s)",
    "SELECT * FROM wallet.wallet_history(NULL, %(a)s)",
    "SELECT * FROM wallet.list_wallets(NULL)",
    "SELECT * FROM wallet.verify_ledger()",
]


@pytest.fixture
def names(db) -> dict:
    a = funded_wallet(db, 10_000, owner="a")
    b = new_wallet(db, "b")
    scheduled = scalar(
        db,
        "SELECT id FROM wallet.deposit('svc', NULL, NULL, NULL, %s, 500, NULL, '{}', %s)",
        a,
        datetime.now(UTC) + timedelta(hours=1),
    )
    return {"a": a, "b": b, "scheduled": scheduled}


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_every_writer_refuses_an_isolation_level_other_than_read_committed(database_url, db, names, level):
    before = ledger_state(db)
    with psycopg.connect(database_url) as connection:
        for case, statement in WRITES.items():
            connection.execute(f"BEGIN ISOLATION LEVEL {level}")
            with raises_sqlstate("WT500", f"{case} under {level}"):
                connection.execute(statement, names)
            connection.rollback()
        for statement in READS:
            connection.execute(f"BEGIN ISOLATION LEVEL {level}")
            connection.execute(statement, names).fetchall()
            connection.rollback()

    assert ledger_state(db) == before


def test_under_read_committed_the_same_calls_succeed(db, names):
    outcomes = [db.execute(statement, names).fetchone()[0] for statement in WRITES.values()]

    assert all(outcome is not None for outcome in outcomes)
    assert rows(db, "SELECT * FROM wallet.verify_ledger()") == []
