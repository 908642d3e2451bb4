"""Wallets: open, read, list, freeze, unfreeze, close, and their history."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from litestar import Controller, Response, get, post
from litestar.params import Parameter

from api.dependencies import Caller, Write
from api.errors import ApiError, problem_responses
from api.examples import REPLAY_NOTE, wallet_response
from api.paging import CURSOR_PATTERNS, decode_cursor, decode_instant, encode_cursor
from api.responses import created, ok
from api.schemas import (
    PAGE_LIMIT_DEFAULT,
    PAGE_LIMIT_MAX,
    HistoryItem,
    HistoryPage,
    OpenWalletRequest,
    Wallet,
    WalletPage,
    from_record,
    wallet_from_record,
)
from api.scopes import requires
from core import ledger

Limit = Annotated[int, Parameter(ge=1, le=PAGE_LIMIT_MAX, description="Page size")]
WalletCursor = Annotated[
    str | None, Parameter(pattern=CURSOR_PATTERNS[UUID], description="next_cursor of the previous page")
]


def time_bound(description: str) -> Any:
    """A history bound: a string, parsed strictly by decode_instant (Litestar would take `0.5`
    for a date-time, as a Unix time)."""
    return Parameter(
        description=f"RFC 3339 date-time with an offset, {description}; its UTC value in the years 1 to 9999",
        schema_extra={"format": "date-time"},
    )


HistoryCursor = Annotated[
    str | None, Parameter(pattern=CURSOR_PATTERNS[int], description="next_cursor of the previous page")
]


class WalletController(Controller):
    path = "/v1/wallets"
    tags = ("wallets",)

    @post(
        "/",
        **requires("wallets:create"),
        operation_id="openWallet",
        summary="Open a wallet",
        responses={201: wallet_response(Wallet, "The wallet. " + REPLAY_NOTE)}
        | problem_responses("idempotency_key_reused", "payload_too_large"),
        status_code=201,
    )
    async def open_wallet(self, data: OpenWalletRequest, write: Write) -> Response[Wallet]:
        """Open a wallet for an owner, in IRR unless `currency` says otherwise; it starts active and empty.

        An owner's token opens wallets for its own `owner_id` only. Idempotent with `Idempotency-Key`: a
        retry of the same request returns the same wallet (`Idempotent-Replayed: true`)."""
        if write.caller.owner_id is not None and data.owner_id != write.caller.owner_id:
            raise ApiError(403, "forbidden", "this token opens wallets for its own owner_id only")
        record = await ledger.open_wallet(
            write.pool, write.actor, data.owner_id, data.currency, data.metadata
        )
        return created(wallet_from_record(record), record, f"/v1/wallets/{record['id']}")

    @get(
        "/{wallet_id:str}",
        **requires("wallets:read"),
        operation_id="getWallet",
        summary="Read a wallet",
        responses=problem_responses("not_found"),
    )
    async def get_wallet(self, wallet_id: UUID, caller: Caller) -> Wallet:
        """A wallet's balance (posted money), `available` (what can be spent now) and `pending` (scheduled
        deposits not yet settled). Reads lock nothing. Another owner's wallet is 404, never 200."""
        record = await ledger.get_wallet(caller.pool, caller.owner_id, wallet_id)
        return wallet_from_record(record)

    @get(
        "/",
        **requires("wallets:read"),
        operation_id="listWallets",
        summary="List wallets",
        responses=problem_responses(),
    )
    async def list_wallets(
        self,
        caller: Caller,
        owner_id: Annotated[str | None, Parameter(min_length=1, max_length=255)] = None,
        limit: Limit = PAGE_LIMIT_DEFAULT,
        cursor: WalletCursor = None,
    ) -> WalletPage:
        """Wallets oldest first, in keyset pages (`limit` 1 to 500, `cursor` from `next_cursor`); an
        owner's token sees its own wallets only."""
        if caller.owner_id is not None:
            if owner_id not in (None, caller.owner_id):
                return WalletPage(items=[], next_cursor=None)
            owner_id = caller.owner_id
        records = await ledger.list_wallets(caller.pool, owner_id, limit + 1, decode_cursor(cursor, UUID))
        items = [wallet_from_record(record) for record in records[:limit]]
        next_cursor = encode_cursor(items[-1].id) if len(records) > limit else None
        return WalletPage(items=items, next_cursor=next_cursor)

    @post(
        "/{wallet_id:str}/freeze",
        **requires("wallets:admin"),
        operation_id="freezeWallet",
        summary="Freeze a wallet",
        status_code=200,
        responses=problem_responses("not_found", "wallet_not_active", "idempotency_key_reused"),
    )
    async def freeze(self, wallet_id: UUID, write: Write) -> Response[Wallet]:
        """No money moves in or out of a frozen wallet until it is unfrozen; scheduled deposits wait (and
        are retried) until then. Locks the wallet row; idempotent with `Idempotency-Key`."""
        record = await ledger.change_wallet_status(write.pool, write.actor, "freeze", wallet_id)
        return ok(wallet_from_record(record), record)

    @post(
        "/{wallet_id:str}/unfreeze",
        **requires("wallets:admin"),
        operation_id="unfreezeWallet",
        summary="Unfreeze a wallet",
        status_code=200,
        responses=problem_responses("not_found", "wallet_not_active", "idempotency_key_reused"),
    )
    async def unfreeze(self, wallet_id: UUID, write: Write) -> Response[Wallet]:
        """Money moves again. Locks the wallet row; idempotent with `Idempotency-Key`."""
        record = await ledger.change_wallet_status(write.pool, write.actor, "unfreeze", wallet_id)
        return ok(wallet_from_record(record), record)

    @post(
        "/{wallet_id:str}/close",
        **requires("wallets:admin"),
        operation_id="closeWallet",
        summary="Close a wallet",
        status_code=200,
        responses=problem_responses("not_found", "wallet_not_empty", "idempotency_key_reused"),
    )
    async def close(self, wallet_id: UUID, write: Write) -> Response[Wallet]:
        """Close an empty wallet (balance and pending both 0), for good: a closed wallet takes no money and
        cannot be reopened. Locks the wallet row; idempotent with `Idempotency-Key`."""
        record = await ledger.change_wallet_status(write.pool, write.actor, "close", wallet_id)
        return ok(wallet_from_record(record), record)

    @get(
        "/{wallet_id:str}/transactions",
        **requires("wallets:read"),
        operation_id="walletHistory",
        summary="A wallet's history",
        responses=problem_responses("not_found"),
    )
    async def history(
        self,
        wallet_id: UUID,
        caller: Caller,
        limit: Limit = PAGE_LIMIT_DEFAULT,
        cursor: HistoryCursor = None,
        kind: Literal["deposit", "withdrawal", "transfer"] | None = None,
        since: Annotated[str | None, time_bound(description="inclusive")] = None,
        until: Annotated[str | None, time_bound(description="exclusive")] = None,
    ) -> HistoryPage:
        """The wallet's transactions, newest first, in keyset pages; `amount` is the signed net effect on
        this wallet and `balance_after` its balance after it, so the posted items sum to the balance.
        Filter by `kind` and by time (`since` inclusive, `until` exclusive)."""
        records = await ledger.wallet_history(
            caller.pool,
            caller.owner_id,
            wallet_id,
            limit + 1,
            decode_cursor(cursor, int),
            kind,
            decode_instant(since, "since"),
            decode_instant(until, "until"),
        )
        items = [from_record(HistoryItem, record) for record in records[:limit]]
        next_cursor = encode_cursor(records[limit - 1]["seq"]) if len(records) > limit else None
        return HistoryPage(items=items, next_cursor=next_cursor)
