"""Calls into the ledger's SQL functions, for the tests that call them directly (tests/sql,
tests/jobs).

Every call casts its parameters explicitly, so PostgreSQL resolves the very signature the
API calls whatever type psycopg picks for a Python value (int2, int4, numeric or unknown).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

SERVICE = "svc"
MAX_AMOUNT = 10**15


def rows(db: psycopg.Connection, sql: str, *params: Any) -> list[dict[str, Any]]:
    with db.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(sql, params or None).fetchall()


def one(db: psycopg.Connection, sql: str, *params: Any) -> dict[str, Any]:
    result = rows(db, sql, *params)
    assert len(result) == 1, result
    return result[0]


def scalar(db: psycopg.Connection, sql: str, *params: Any) -> Any:
    row = db.execute(sql, params or None).fetchone()
    assert row is not None
    return row[0]


@contextlib.contextmanager
def raises_sqlstate(sqlstate: str, case: object = "") -> Iterator[None]:
    """The block raises a database error with this SQLSTATE (never the wording).

    case names the example in a loop of examples, so a failure says which one.
    """
    with pytest.raises(psycopg.Error) as error:
        yield
        pytest.fail(f"{case}: expected SQLSTATE {sqlstate}, nothing was raised")
    assert error.value.sqlstate == sqlstate, f"{case}: {error.value.sqlstate}: {error.value}"


def _json(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


def _fingerprint(key: str | None, fingerprint: str | None) -> str | None:
    if fingerprint is not None:
        return fingerprint
    return None if key is None else "fingerprint-1"


def open_wallet(
    db: psycopg.Connection,
    owner: str = "merchant-1",
    currency: str | None = None,
    metadata: Any = None,
    *,
    caller: str = SERVICE,
    key: str | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    return one(
        db,
        "SELECT * FROM wallet.open_wallet(%s::text, %s::text, %s::text, %s::text, %s::text, %s::jsonb)",
        caller,
        key,
        _fingerprint(key, fingerprint),
        owner,
        currency,
        _json(metadata),
    )


def new_wallet(db: psycopg.Connection, owner: str = "merchant-1", currency: str | None = None):
    return open_wallet(db, owner, currency)["id"]


def funded_wallet(db: psycopg.Connection, amount: int, owner: str = "merchant-1"):
    wallet_id = new_wallet(db, owner)
    deposit(db, wallet_id, amount)
    return wallet_id


def get_wallet(db: psycopg.Connection, wallet_id, *, acting: str | None = None) -> dict[str, Any]:
    return one(db, "SELECT * FROM wallet.get_wallet(%s::text, %s::uuid)", acting, wallet_id)


def list_wallets(
    db: psycopg.Connection, owner: str | None = None, limit: int | None = 50, after=None
) -> list[dict[str, Any]]:
    return rows(
        db,
        "SELECT * FROM wallet.list_wallets(%s::text, %s::integer, %s::uuid)",
        owner,
        limit,
        after,
    )


def change_status(
    db: psycopg.Connection,
    action: str,
    wallet_id,
    *,
    acting: str | None = None,
    caller: str = SERVICE,
    key: str | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """action: freeze, unfreeze or close."""
    assert action in {"freeze", "unfreeze", "close"}
    return one(
        db,
        f"SELECT * FROM wallet.{action}_wallet(%s::text, %s::text, %s::text, %s::text, %s::uuid)",
        caller,
        key,
        _fingerprint(key, fingerprint),
        acting,
        wallet_id,
    )


def deposit(
    db: psycopg.Connection,
    wallet_id,
    amount: int,
    *,
    acting: str | None = None,
    caller: str = SERVICE,
    key: str | None = None,
    fingerprint: str | None = None,
    reference: str | None = None,
    metadata: Any = None,
) -> dict[str, Any]:
    return _movement(db, "deposit", wallet_id, amount, acting, caller, key, fingerprint, reference, metadata)


def deposit_at(
    db: psycopg.Connection,
    wallet_id,
    amount: int,
    available_at: datetime | None,
    *,
    acting: str | None = None,
    caller: str = SERVICE,
    key: str | None = None,
    reference: str | None = None,
) -> dict[str, Any]:
    """wallet.deposit with p_available_at, as the API calls it: a deposit scheduled for
    available_at (posted at once when that is None or past)."""
    return one(
        db,
        "SELECT * FROM wallet.deposit(%s::text, %s::text, %s::text, %s::text, %s::uuid, %s::bigint,"
        " %s::text, %s::jsonb, %s::timestamptz)",
        caller,
        key,
        _fingerprint(key, None),
        acting,
        wallet_id,
        amount,
        reference,
        None,
        available_at,
    )


def wait_until_due(db: psycopg.Connection, *transaction_ids, within: float = 30.0) -> None:
    """Until the last of these scheduled transactions is due by the database's clock: a real
    time condition, waited for as long as it takes and no longer (at most `within` seconds)."""
    due_in = scalar(
        db,
        "SELECT max(available_at) - clock_timestamp() FROM wallet.transactions WHERE id = ANY(%s)",
        list(transaction_ids),
    )
    seconds = max(due_in.total_seconds(), 0)
    assert seconds <= within, f"due in {seconds:.1f} s, more than the {within} s allowed"
    time.sleep(seconds + 0.05)


def withdraw(
    db: psycopg.Connection,
    wallet_id,
    amount: int,
    *,
    acting: str | None = None,
    caller: str = SERVICE,
    key: str | None = None,
    fingerprint: str | None = None,
    reference: str | None = None,
    metadata: Any = None,
) -> dict[str, Any]:
    return _movement(db, "withdraw", wallet_id, amount, acting, caller, key, fingerprint, reference, metadata)


def _movement(db, function, wallet_id, amount, acting, caller, key, fingerprint, reference, meta):
    return one(
        db,
        f"SELECT * FROM wallet.{function}(%s::text, %s::text, %s::text, %s::text, %s::uuid,"
        " %s::bigint, %s::text, %s::jsonb)",
        caller,
        key,
        _fingerprint(key, fingerprint),
        acting,
        wallet_id,
        amount,
        reference,
        _json(meta),
    )


def transfer(
    db: psycopg.Connection,
    from_wallet_id,
    to_wallet_id,
    amount: int,
    *,
    acting: str | None = None,
    caller: str = SERVICE,
    key: str | None = None,
    fingerprint: str | None = None,
    reference: str | None = None,
    metadata: Any = None,
) -> dict[str, Any]:
    return one(
        db,
        "SELECT * FROM wallet.transfer(%s::text, %s::text, %s::text, %s::text, %s::uuid, %s::uuid,"
        " %s::bigint, %s::text, %s::jsonb)",
        caller,
        key,
        _fingerprint(key, fingerprint),
        acting,
        from_wallet_id,
        to_wallet_id,
        amount,
        reference,
        _json(metadata),
    )


def get_transaction(db: psycopg.Connection, transaction_id, *, acting: str | None = None):
    return one(db, "SELECT * FROM wallet.get_transaction(%s::text, %s::uuid)", acting, transaction_id)


def history(
    db: psycopg.Connection,
    wallet_id,
    *,
    acting: str | None = None,
    limit: int | None = 50,
    before_seq: int | None = None,
    kind: str | None = None,
    since=None,
    until=None,
) -> list[dict[str, Any]]:
    return rows(
        db,
        "SELECT * FROM wallet.wallet_history(%s::text, %s::uuid, %s::integer, %s::bigint,"
        " %s::text, %s::timestamptz, %s::timestamptz)",
        acting,
        wallet_id,
        limit,
        before_seq,
        kind,
        since,
        until,
    )


def set_rule(
    db: psycopg.Connection,
    operation: str,
    *,
    rate_bps: int = 0,
    fixed: int = 0,
    min_fee: int = 0,
    max_fee: int | None = MAX_AMOUNT,
    owner: str | None = None,
    caller: str = SERVICE,
) -> dict[str, Any]:
    # The default cap is explicit on purpose: tests about other parts of a rule should not
    # depend on how a NULL cap behaves, which has tests of its own in test_commission.py.
    return one(
        db,
        "SELECT * FROM wallet.set_commission_rule(%s::text, %s::text, %s::text, %s::integer,"
        " %s::bigint, %s::bigint, %s::bigint)",
        caller,
        operation,
        owner,
        rate_bps,
        fixed,
        min_fee,
        max_fee,
    )


def entries_of(db: psycopg.Connection, transaction_id) -> list[dict[str, Any]]:
    return rows(
        db,
        "SELECT wallet_id, account, currency, net_amount, balance_before, balance_after"
        " FROM wallet.entries WHERE transaction_id = %s ORDER BY id",
        transaction_id,
    )


def ledger_state(db: psycopg.Connection) -> dict[str, Any]:
    """Everything a failed call must leave as it was."""
    return {
        "wallets": rows(
            db,
            "SELECT id, status, balance, pending, metadata, updated_at FROM wallet.wallets ORDER BY id",
        ),
        "transactions": scalar(db, "SELECT count(*) FROM wallet.transactions"),
        "entries": scalar(db, "SELECT count(*) FROM wallet.entries"),
        "idempotency_keys": scalar(db, "SELECT count(*) FROM wallet.idempotency_keys"),
        "commission_rules": scalar(db, "SELECT count(*) FROM wallet.commission_rules"),
    }


def unknown_id() -> uuid.UUID:
    return uuid.uuid4()


def metadata_of_size(size: int) -> dict[str, str]:
    """A JSON object whose jsonb text form is exactly size bytes: {"k": "xx...x"}."""
    overhead = len('{"k": ""}')
    return {"k": "x" * (size - overhead)}
