"""A ledger written before the hash chain existed is chained by `wallet migrate` (migration
0006's backfill) and then verifies exactly as a fresh one (issue 9, item 4)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from yoyo import get_backend, read_migrations
from yoyo.migrations import MigrationList

from core.migrate import MIGRATIONS_DIR, _yoyo_url, migrate
from tests.support.databases import create_database, drop_database, unique_name

BEFORE_THE_CHAIN = "0005_settlement_blocker_returns_its_sqlstate"

# What the release before the chain wrote, row by row as its functions did: a deposit with a
# fee, a transfer, a withdrawal, a scheduled and a canceled deposit, a wallet then frozen.
OLD_LEDGER = """
INSERT INTO wallet.commission_rules (operation, owner_id, rate_bps, fixed, min_fee, max_fee)
VALUES ('deposit', NULL, 10, 0, 0, NULL), ('transfer', 'shop-a', 0, 5, 0, NULL);
INSERT INTO wallet.wallets (id, owner_id) VALUES ('{a}', 'shop-a'), ('{b}', 'shop-b'), ('{c}', 'shop-c');
INSERT INTO wallet.transactions (id, kind, status, wallet_id, from_wallet_id, to_wallet_id, currency,
                                 amount, fee, posted_at)
VALUES ('{t1}', 'deposit', 'posted', '{a}', NULL, NULL, 'IRR', 10000, 10, now()),
       ('{t2}', 'transfer', 'posted', NULL, '{a}', '{c}', 'IRR', 1000, 5, now()),
       ('{t3}', 'withdrawal', 'posted', '{c}', NULL, NULL, 'IRR', 300, 0, now()),
       ('{t4}', 'deposit', 'posted', '{b}', NULL, NULL, 'IRR', 50, 0, now());
INSERT INTO wallet.entries (transaction_id, wallet_id, account, currency, net_amount,
                            balance_before, balance_after)
VALUES ('{t1}', NULL, 'world', 'IRR', -10000, NULL, NULL),
       ('{t1}', NULL, 'revenue', 'IRR', 10, NULL, NULL),
       ('{t1}', '{a}', NULL, 'IRR', 9990, 0, 9990),
       ('{t2}', '{a}', NULL, 'IRR', -1005, 9990, 8985),
       ('{t2}', '{c}', NULL, 'IRR', 1000, 0, 1000),
       ('{t2}', NULL, 'revenue', 'IRR', 5, NULL, NULL),
       ('{t3}', '{c}', NULL, 'IRR', -300, 1000, 700),
       ('{t3}', NULL, 'world', 'IRR', 300, NULL, NULL),
       ('{t4}', NULL, 'world', 'IRR', -50, NULL, NULL),
       ('{t4}', '{b}', NULL, 'IRR', 50, 0, 50);
INSERT INTO wallet.transactions (id, kind, status, wallet_id, currency, amount, fee, available_at,
                                 history_seq)
VALUES ('{t5}', 'deposit', 'scheduled', '{a}', 'IRR', 500, 0, now() + interval '1 day',
        nextval('wallet.history_seq')),
       ('{t6}', 'deposit', 'canceled', '{c}', 'IRR', 800, 0, now() + interval '1 day',
        nextval('wallet.history_seq'));
UPDATE wallet.wallets SET balance = 8985, pending = 500 WHERE id = '{a}';
UPDATE wallet.wallets SET balance = 50, status = 'frozen' WHERE id = '{b}';
UPDATE wallet.wallets SET balance = 700 WHERE id = '{c}';
"""
IDS = {name: uuid.uuid4() for name in ("a", "b", "c", "t1", "t2", "t3", "t4", "t5", "t6")}


@pytest.fixture
def old_ledger_url(postgres_url: str) -> Iterator[str]:
    """A database migrated to the release before the chain, with a ledger written by it."""
    name = unique_name("wallet_old")
    url = create_database(postgres_url, name)
    backend = get_backend(_yoyo_url(url))
    try:
        with backend.lock():
            old = MigrationList(m for m in read_migrations(str(MIGRATIONS_DIR)) if m.id <= BEFORE_THE_CHAIN)
            backend.apply_migrations(backend.to_apply(old))
    finally:
        backend.connection.close()
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(OLD_LEDGER.format(**IDS))
    yield url
    drop_database(postgres_url, name)


def test_an_old_ledger_is_chained_by_migrate_and_verifies_clean(old_ledger_url):
    migrate(old_ledger_url)

    with psycopg.connect(old_ledger_url, autocommit=True) as db:
        violations = db.execute("SELECT * FROM wallet.verify_ledger()").fetchall()
        versions = dict(db.execute("SELECT owner_id, chain_version FROM wallet.wallets").fetchall())
        events = db.execute("SELECT event FROM wallet.status_changes ORDER BY event").fetchall()
        digest = db.execute("SELECT wallet.ledger_checkpoint()").fetchone()[0]
        # The old ledger goes on with the new functions, and stays sound.
        db.execute("SELECT wallet.transfer('svc', NULL, NULL, NULL, %s, %s, 100)", (IDS["a"], IDS["c"]))
        db.execute("SELECT wallet.unfreeze_wallet('svc', NULL, NULL, NULL, %s)", (IDS["b"],))
        after = db.execute("SELECT * FROM wallet.verify_ledger()").fetchall()
        still_extends = db.execute("SELECT * FROM wallet.verify_checkpoint(%s)", (digest,)).fetchall()
        rules = db.execute(
            "SELECT count(*) FROM wallet.commission_rules WHERE chain_hash IS NOT NULL"
        ).fetchone()[0]

    assert violations == []
    # a: deposit, transfer, scheduled; b: deposit, frozen; c: transfer, withdrawal, canceled.
    assert versions == {"shop-a": 3, "shop-b": 2, "shop-c": 3}
    assert [event for (event,) in events] == ["deposit_canceled", "deposit_scheduled", "wallet_frozen"]
    assert rules == 2
    assert after == []
    assert still_extends == []
