"""The one way Python calls the ledger: one typed coroutine per SQL function of schema wallet.

The API's handlers, the worker's tasks and the command line call these, never SQL of their
own. A function that writes on a client's behalf takes an Actor first, and its SQL function
takes the same four values first: who calls (the token's sub), the idempotency key, the
fingerprint of the request the key must match, and the owner the caller is limited to. Money
movements count their outcomes (core.metrics.MOVEMENTS). Errors are the database's own
(asyncpg.PostgresError with the SQLSTATE of core.errors); nothing here reads a message.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import asyncpg
import msgspec

from core.errors import BY_SQLSTATE
from core.metrics import MOVEMENTS

# A pool or one of its connections: both run a statement.
Database = asyncpg.Pool | asyncpg.Connection
Operation = Literal["deposit", "withdrawal", "transfer"]
Metadata = dict[str, Any] | None


class Actor(msgspec.Struct, frozen=True):
    """Who writes: the token's sub, the Idempotency-Key and the request's fingerprint (both
    None without a key), and the owner the token is limited to (None: a service token)."""

    sub: str
    idempotency_key: str | None
    fingerprint: str | None
    owner_id: str | None

    @property
    def arguments(self) -> tuple[str, str | None, str | None, str | None]:
        return self.sub, self.idempotency_key, self.fingerprint, self.owner_id


# Wallets.


async def open_wallet(
    database: Database, actor: Actor, owner_id: str, currency: str, metadata: Metadata
) -> asyncpg.Record:
    return await database.fetchrow(
        "SELECT * FROM wallet.open_wallet($1, $2, $3, $4, $5, $6)",
        actor.sub,
        actor.idempotency_key,
        actor.fingerprint,
        owner_id,
        currency,
        metadata,
    )


async def get_wallet(database: Database, acting_owner: str | None, wallet_id: UUID) -> asyncpg.Record:
    return await database.fetchrow("SELECT * FROM wallet.get_wallet($1, $2)", acting_owner, wallet_id)


async def list_wallets(
    database: Database, owner_id: str | None, limit: int, after_id: UUID | None
) -> list[asyncpg.Record]:
    return await database.fetch("SELECT * FROM wallet.list_wallets($1, $2, $3)", owner_id, limit, after_id)


async def change_wallet_status(
    database: Database, actor: Actor, change: Literal["freeze", "unfreeze", "close"], wallet_id: UUID
) -> asyncpg.Record:
    """wallet.freeze_wallet, wallet.unfreeze_wallet or wallet.close_wallet."""
    return await database.fetchrow(_STATUS_CHANGES[change], *actor.arguments, wallet_id)


_STATUS_CHANGES = {
    change: f"SELECT * FROM wallet.{change}_wallet($1, $2, $3, $4, $5)"
    for change in ("freeze", "unfreeze", "close")
}


async def wallet_history(
    database: Database,
    acting_owner: str | None,
    wallet_id: UUID,
    limit: int,
    before_seq: int | None,
    kind: Operation | None,
    since: datetime | None,
    until: datetime | None,
) -> list[asyncpg.Record]:
    """wallet.wallet_history_v2: a page of history items, each with hold_id (a capture's hold)."""
    return await database.fetch(
        "SELECT * FROM wallet.wallet_history_v2($1, $2, $3, $4, $5, $6, $7)",
        acting_owner,
        wallet_id,
        limit,
        before_seq,
        kind,
        since,
        until,
    )


# Money movements.


async def deposit(
    database: Database,
    actor: Actor,
    wallet_id: UUID,
    amount: int,
    reference: str | None,
    metadata: Metadata,
    available_at: datetime | None,
) -> asyncpg.Record:
    return await _movement(
        "deposit",
        database,
        "SELECT * FROM wallet.deposit($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        *actor.arguments,
        wallet_id,
        amount,
        reference,
        metadata,
        available_at,
    )


async def withdraw(
    database: Database, actor: Actor, wallet_id: UUID, amount: int, reference: str | None, metadata: Metadata
) -> asyncpg.Record:
    return await _movement(
        "withdrawal",
        database,
        "SELECT * FROM wallet.withdraw($1, $2, $3, $4, $5, $6, $7, $8)",
        *actor.arguments,
        wallet_id,
        amount,
        reference,
        metadata,
    )


async def transfer(
    database: Database,
    actor: Actor,
    from_wallet_id: UUID,
    to_wallet_id: UUID,
    amount: int,
    reference: str | None,
    metadata: Metadata,
) -> asyncpg.Record:
    return await _movement(
        "transfer",
        database,
        "SELECT * FROM wallet.transfer($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        *actor.arguments,
        from_wallet_id,
        to_wallet_id,
        amount,
        reference,
        metadata,
    )


async def cancel_deposit(database: Database, actor: Actor, transaction_id: UUID) -> asyncpg.Record:
    return await _movement(
        "cancel",
        database,
        "SELECT * FROM wallet.cancel_deposit($1, $2, $3, $4, $5)",
        *actor.arguments,
        transaction_id,
    )


async def get_transaction(
    database: Database, acting_owner: str | None, transaction_id: UUID
) -> asyncpg.Record:
    """wallet.get_transaction_v2: the transaction with the hold a capture drew on (hold_id)."""
    return await database.fetchrow(
        "SELECT * FROM wallet.get_transaction_v2($1, $2)", acting_owner, transaction_id
    )


async def _movement(kind: str, database: Database, query: str, *arguments: Any) -> asyncpg.Record:
    """Run one money-movement function and count its outcome: its status, replayed, or the
    error's code."""
    try:
        record = await database.fetchrow(query, *arguments)
    except asyncpg.PostgresError as error:
        known = BY_SQLSTATE.get(error.sqlstate or "")
        MOVEMENTS.labels(kind, "error" if known is None else known.code).inc()
        raise
    except Exception:
        MOVEMENTS.labels(kind, "error").inc()
        raise
    MOVEMENTS.labels(kind, "replayed" if record["replayed"] else record["status"]).inc()
    return record


# Holds: money reserved in a wallet (held, not available), then captured in parts or voided.


async def place_hold(
    database: Database,
    actor: Actor,
    wallet_id: UUID,
    amount: int,
    expires_at: datetime | None,
    reference: str | None,
    metadata: Metadata,
) -> asyncpg.Record:
    return await _movement(
        "hold",
        database,
        "SELECT * FROM wallet.place_hold($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        *actor.arguments,
        wallet_id,
        amount,
        expires_at,
        reference,
        metadata,
    )


async def capture_hold(
    database: Database,
    actor: Actor,
    hold_id: UUID,
    amount: int | None,
    to_wallet_id: UUID | None,
    final: bool,
) -> asyncpg.Record:
    """A withdrawal (or, with to_wallet_id, a transfer) drawn on the hold; its transaction."""
    return await _movement(
        "capture",
        database,
        "SELECT * FROM wallet.capture_hold($1, $2, $3, $4, $5, $6, $7, $8)",
        *actor.arguments,
        hold_id,
        amount,
        to_wallet_id,
        final,
    )


async def void_hold(database: Database, actor: Actor, hold_id: UUID) -> asyncpg.Record:
    return await _movement(
        "void", database, "SELECT * FROM wallet.void_hold($1, $2, $3, $4, $5)", *actor.arguments, hold_id
    )


async def get_hold(database: Database, acting_owner: str | None, hold_id: UUID) -> asyncpg.Record:
    return await database.fetchrow("SELECT * FROM wallet.get_hold($1, $2)", acting_owner, hold_id)


HoldStatus = Literal["active", "captured", "voided", "expired"]


async def list_holds(
    database: Database,
    acting_owner: str | None,
    wallet_id: UUID,
    status: HoldStatus | None,
    limit: int,
    before_id: UUID | None,
) -> list[asyncpg.Record]:
    """A wallet's holds, newest first, from before before_id on."""
    return await database.fetch(
        "SELECT * FROM wallet.list_holds($1, $2, $3, $4, $5)",
        acting_owner,
        wallet_id,
        status,
        limit,
        before_id,
    )


# Commission rules.


async def commission_rules_in_force(database: Database) -> list[asyncpg.Record]:
    return await database.fetch("SELECT * FROM wallet.commission_rules_in_force()")


async def commission_rules_for_owner(database: Database, owner_id: str) -> list[asyncpg.Record]:
    return await database.fetch("SELECT * FROM wallet.commission_rules_for_owner($1)", owner_id)


async def set_commission_rule(
    database: Database,
    sub: str,
    operation: Operation,
    owner_id: str | None,
    rate_bps: int,
    fixed: int,
    min_fee: int,
    max_fee: int | None,
) -> asyncpg.Record:
    return await database.fetchrow(
        "SELECT * FROM wallet.set_commission_rule($1, $2, $3, $4, $5, $6, $7)",
        sub,
        operation,
        owner_id,
        rate_bps,
        fixed,
        min_fee,
        max_fee,
    )


# Scheduled deposits: the worker's side.


async def settle_deposit(
    database: Database, transaction_id: UUID, last_attempt: bool, sweep_limit: int
) -> str:
    """Post a due scheduled deposit (and up to sweep_limit others due); returns its outcome."""
    return await database.fetchval(
        "SELECT wallet.settle_deposit($1, $2, $3)", transaction_id, last_attempt, sweep_limit
    )


async def reconcile_scheduled_deposits(database: Database, grace: timedelta) -> int:
    """Re-enqueue due scheduled deposits without a live job for grace; returns how many."""
    return await database.fetchval("SELECT wallet.reconcile_scheduled_deposits($1)", grace)


async def prune_idempotency_keys(database: Database, retention: timedelta) -> int:
    return await database.fetchval("SELECT wallet.prune_idempotency_keys($1)", retention)


async def settlement_stats(database: Database, window: timedelta) -> asyncpg.Record:
    return await database.fetchrow("SELECT * FROM wallet.settlement_stats($1)", window)


# Audits: run by a role that may (wallet_auditor's members).


async def verify_ledger(database: Database) -> list[asyncpg.Record]:
    return await database.fetch("SELECT check_name, detail FROM wallet.verify_ledger()")


async def verify_ledger_since(database: Database, since: datetime) -> list[asyncpg.Record]:
    return await database.fetch("SELECT check_name, detail FROM wallet.verify_ledger_since($1)", since)


async def verify_checkpoint(database: Database, digest: str) -> list[asyncpg.Record]:
    return await database.fetch("SELECT check_name, detail FROM wallet.verify_checkpoint($1)", digest)


async def ledger_checkpoint(database: Database) -> str:
    return await database.fetchval("SELECT wallet.ledger_checkpoint()")


# Holds: the worker's side.


async def expire_hold(database: Database, hold_id: UUID) -> str:
    """Expire an active hold that is due, releasing its money: 'expired'; the hold's status
    when it is no longer active (captured, voided, expired); 'not_due' before expires_at."""
    return await database.fetchval("SELECT wallet.expire_hold($1)", hold_id)


async def expire_due_holds(database: Database, limit: int) -> int:
    """Expire up to limit other due holds in one transaction (the sweep); returns how many."""
    return await database.fetchval("SELECT wallet.expire_due_holds($1)", limit)


async def reconcile_hold_expiries(database: Database, grace: timedelta) -> int:
    """Re-enqueue the expiry of active holds overdue for grace without a live job; how many."""
    return await database.fetchval("SELECT wallet.reconcile_hold_expiries($1)", grace)


async def hold_stats(database: Database, window: timedelta) -> asyncpg.Record:
    return await database.fetchrow("SELECT * FROM wallet.hold_stats($1)", window)
