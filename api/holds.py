"""Holds (authorizations): reserve money in a wallet, then capture it in parts or void it."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from litestar import Controller, Response, get, post
from litestar.params import Parameter

from api.dependencies import Caller, Write
from api.errors import problem_responses
from api.examples import REPLAY_NOTE, captured_transaction, hold_page, hold_response
from api.paging import CURSOR_PATTERNS, decode_cursor, encode_cursor
from api.responses import created, ok
from api.schemas import (
    PAGE_LIMIT_DEFAULT,
    PAGE_LIMIT_MAX,
    CaptureHoldRequest,
    Hold,
    HoldPage,
    PlaceHoldRequest,
    Transaction,
    from_record,
    transaction_from_record,
)
from api.scopes import requires
from core import ledger

WRITE_CODES = ("not_found", "idempotency_key_reused", "payload_too_large")
Limit = Annotated[int, Parameter(ge=1, le=PAGE_LIMIT_MAX, description="Page size")]
HoldCursor = Annotated[
    str | None, Parameter(pattern=CURSOR_PATTERNS[UUID], description="next_cursor of the previous page")
]


class HoldController(Controller):
    path = "/v1"
    tags = ("holds",)

    @post(
        "/wallets/{wallet_id:str}/holds",
        **requires("holds:write"),
        operation_id="placeHold",
        summary="Place a hold",
        responses={201: hold_response(Hold, "The hold, `active`. " + REPLAY_NOTE)}
        | problem_responses(*WRITE_CODES, "wallet_not_active", "insufficient_funds"),
    )
    async def place(self, wallet_id: UUID, data: PlaceHoldRequest, write: Write) -> Response[Hold]:
        """Reserve `amount` of the wallet's `available` money (an authorization): `held` grows by it and
        `available` shrinks, while `balance` stays; nothing is posted and no fee is charged. The hold
        is captured later (in one or several parts), voided, or it expires at `expires_at` (7 days
        ahead by default, at most 366), and what it still reserves is released then.

        `422 insufficient_funds` when `available` cannot cover it. Locks the wallet row, checks and
        writes in one transaction, so parallel holds and withdrawals never reserve or spend the same
        rial twice. Idempotent with `Idempotency-Key`: a retry places no second hold."""
        record = await ledger.place_hold(
            write.pool, write.actor, wallet_id, data.amount, data.expires_at, data.reference, data.metadata
        )
        return created(from_record(Hold, record), record, f"/v1/holds/{record['id']}")

    @post(
        "/holds/{hold_id:str}/capture",
        **requires("holds:write"),
        operation_id="captureHold",
        summary="Capture a hold",
        responses={201: captured_transaction(Transaction)}
        | problem_responses(
            *WRITE_CODES,
            "hold_not_active",
            "wallet_not_active",
            "amount_exceeds_hold",
            "insufficient_funds",
            "currency_mismatch",
            "same_wallet",
            "balance_limit_exceeded",
        ),
    )
    async def capture(self, hold_id: UUID, data: CaptureHoldRequest, write: Write) -> Response[Transaction]:
        """Spend `amount` of an active hold (all that remains without one): the wallet pays `amount` plus
        the fee of the rule in force, to the outside world (a `withdrawal`) or, with `to_wallet_id`, to a
        wallet of any owner in the same currency (a `transfer`); the transaction carries `hold_id`. The
        amount comes out of the hold, the fee out of `available`. A hold can be captured again until
        nothing remains; `final: true` closes it after this capture and releases the rest.

        `422 amount_exceeds_hold` above the remaining amount; `409 hold_not_active` once the hold is
        captured in full, voided or expired, or its `expires_at` has passed (it is expiring).

        Locks the hold, then its wallets in wallet-id order, in one transaction, so a capture racing a
        void or the expiry ends in exactly one outcome. Idempotent with `Idempotency-Key`: a retry
        captures nothing again. The body is required: `{}` captures everything that remains."""
        record = await ledger.capture_hold(
            write.pool, write.actor, hold_id, data.amount, data.to_wallet_id, data.final
        )
        return created(transaction_from_record(record), record, f"/v1/transactions/{record['id']}")

    @post(
        "/holds/{hold_id:str}/void",
        **requires("holds:write"),
        operation_id="voidHold",
        summary="Void a hold",
        status_code=200,
        responses={200: hold_response(Hold, "The hold, `voided`. " + REPLAY_NOTE)}
        | problem_responses("not_found", "hold_not_active", "idempotency_key_reused"),
    )
    async def void(self, hold_id: UUID, write: Write) -> Response[Hold]:
        """Release what an active hold still reserves: `held` shrinks and `available` grows by its
        `remaining`; what it captured before stays captured. It works on a frozen wallet too: releasing
        moves no money. `409 hold_not_active` once it is captured in full, voided or expired. Locks the
        hold, then its wallet, in one transaction. Idempotent with `Idempotency-Key`."""
        record = await ledger.void_hold(write.pool, write.actor, hold_id)
        return ok(from_record(Hold, record), record)

    @get(
        "/holds/{hold_id:str}",
        **requires("wallets:read"),
        operation_id="getHold",
        summary="Read a hold",
        responses={200: hold_response(Hold, "The hold.")} | problem_responses("not_found"),
    )
    async def get_hold(self, hold_id: UUID, caller: Caller) -> Hold:
        """A hold by id: its status (`active`, `captured`, `voided` or `expired`), what it reserved,
        captured and still reserves. Reads lock nothing. A hold on another owner's wallet is 404."""
        record = await ledger.get_hold(caller.pool, caller.owner_id, hold_id)
        return from_record(Hold, record)

    @get(
        "/wallets/{wallet_id:str}/holds",
        **requires("wallets:read"),
        operation_id="listHolds",
        summary="A wallet's holds",
        responses={200: hold_page(HoldPage)} | problem_responses("not_found"),
    )
    async def list_holds(
        self,
        wallet_id: UUID,
        caller: Caller,
        status: Literal["active", "captured", "voided", "expired"] | None = None,
        limit: Limit = PAGE_LIMIT_DEFAULT,
        cursor: HoldCursor = None,
    ) -> HoldPage:
        """The wallet's holds, newest first, in keyset pages (`limit` 1 to 500, `cursor` from
        `next_cursor`), of one `status` or all. Reads lock nothing; another owner's wallet is 404."""
        records = await ledger.list_holds(
            caller.pool, caller.owner_id, wallet_id, status, limit + 1, decode_cursor(cursor, UUID)
        )
        items = [from_record(Hold, record) for record in records[:limit]]
        next_cursor = encode_cursor(items[-1].id) if len(records) > limit else None
        return HoldPage(items=items, next_cursor=next_cursor)
