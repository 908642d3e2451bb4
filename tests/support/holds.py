"""Calls into the ledger's hold functions (sql/holds.sql, sql/capture_hold.sql,
sql/hold_expiry.sql), for the tests that call them directly. Parameters are cast explicitly,
as in tests/support/ledger.py, so PostgreSQL resolves the signature the API calls."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tests.support.ledger import SERVICE, one, rows, scalar

HOLD_STATUSES = ("active", "captured", "voided", "expired")


def _fingerprint(key: str | None, fingerprint: str | None) -> str | None:
    if fingerprint is not None:
        return fingerprint
    return None if key is None else "fingerprint-1"


def place_hold(
    db: psycopg.Connection,
    wallet_id,
    amount: int,
    *,
    expires_at: datetime | None = None,
    reference: str | None = None,
    metadata: Any = None,
    acting: str | None = None,
    caller: str = SERVICE,
    key: str | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    return one(
        db,
        "SELECT * FROM wallet.place_hold(%s::text, %s::text, %s::text, %s::text, %s::uuid, %s::bigint,"
        " %s::timestamptz, %s::text, %s::jsonb)",
        caller,
        key,
        _fingerprint(key, fingerprint),
        acting,
        wallet_id,
        amount,
        expires_at,
        reference,
        None if metadata is None else Jsonb(metadata),
    )


def capture_hold(
    db: psycopg.Connection,
    hold_id,
    amount: int | None = None,
    *,
    to_wallet_id=None,
    final: bool = False,
    acting: str | None = None,
    caller: str = SERVICE,
    key: str | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """The capture's transaction (wallet.transaction_result_v2)."""
    return one(
        db,
        "SELECT * FROM wallet.capture_hold(%s::text, %s::text, %s::text, %s::text, %s::uuid, %s::bigint,"
        " %s::uuid, %s::boolean)",
        caller,
        key,
        _fingerprint(key, fingerprint),
        acting,
        hold_id,
        amount,
        to_wallet_id,
        final,
    )


def void_hold(
    db: psycopg.Connection,
    hold_id,
    *,
    acting: str | None = None,
    caller: str = SERVICE,
    key: str | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    return one(
        db,
        "SELECT * FROM wallet.void_hold(%s::text, %s::text, %s::text, %s::text, %s::uuid)",
        caller,
        key,
        _fingerprint(key, fingerprint),
        acting,
        hold_id,
    )


def expire_hold(db: psycopg.Connection, hold_id) -> str:
    """What the worker's job calls: 'expired', 'not_due', or the status the hold already had."""
    return scalar(db, "SELECT wallet.expire_hold(%s::uuid)", hold_id)


def get_hold(db: psycopg.Connection, hold_id, *, acting: str | None = None) -> dict[str, Any]:
    return one(db, "SELECT * FROM wallet.get_hold(%s::text, %s::uuid)", acting, hold_id)


def list_holds(
    db: psycopg.Connection,
    wallet_id,
    *,
    acting: str | None = None,
    status: str | None = None,
    limit: int | None = 50,
    before_id=None,
) -> list[dict[str, Any]]:
    return rows(
        db,
        "SELECT * FROM wallet.list_holds(%s::text, %s::uuid, %s::text, %s::integer, %s::uuid)",
        acting,
        wallet_id,
        status,
        limit,
        before_id,
    )


def make_due(db: psycopg.Connection, hold_id) -> None:
    """The hold's expires_at moved to just past (its created_at a day earlier, so the table's
    bounds on its life still hold), as if its time had come: its job is not run."""
    db.execute(
        "UPDATE wallet.holds SET created_at = created_at - interval '1 day',"
        " expires_at = now() - interval '1 millisecond' WHERE id = %s",
        (hold_id,),
    )


def held(db: psycopg.Connection, wallet_id) -> int:
    return scalar(db, "SELECT held FROM wallet.wallets WHERE id = %s", wallet_id)


def active_remaining(db: psycopg.Connection, wallet_id) -> int:
    """What the wallet's active holds still reserve: its held, if the ledger is sound."""
    return scalar(
        db,
        "SELECT coalesce(sum(remaining), 0) FROM wallet.holds WHERE wallet_id = %s AND status = 'active'",
        wallet_id,
    )


def expiry_jobs(db: psycopg.Connection, hold_id) -> list[dict[str, Any]]:
    """The hold's expiry jobs in procrastinate's queue."""
    return rows(
        db,
        "SELECT queue_name, task_name, args, scheduled_at, status::text AS status"
        " FROM procrastinate.procrastinate_jobs WHERE queueing_lock = %s ORDER BY id",
        f"expire-hold:{hold_id}",
    )


def lose_expiry_job(db: psycopg.Connection, hold_id) -> None:
    """Delete the hold's expiry job by hand, as if it were lost (procrastinate's triggers name
    its tables unqualified: its schema goes on this transaction's path)."""
    with db.transaction():
        db.execute("SET LOCAL search_path = pg_catalog, procrastinate")
        db.execute(
            "DELETE FROM procrastinate.procrastinate_jobs WHERE queueing_lock = %s",
            (f"expire-hold:{hold_id}",),
        )
