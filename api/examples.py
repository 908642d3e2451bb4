"""Realistic examples for the API document: IRR amounts, an Idempotency-Key, a replay."""

from __future__ import annotations

from typing import Any

from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example

SHOP_WALLET = "01a23693-7b18-77e2-abdf-62595d634589"
SUPPLIER_WALLET = "01a23694-0c2e-7d51-9f0a-3b8e1c5d7a20"
REPLAY_NOTE = (
    "Sent again with the same Idempotency-Key and body, the request returns this response again, "
    "with `Idempotent-Replayed: true`, and moves no money."
)

OPEN_WALLET = [
    Example(
        summary="A merchant's wallet",
        value={"owner_id": "merchant-4711", "metadata": {"shop": "Tehran Books"}},
    )
]
DEPOSIT = [
    Example(
        summary="Instant deposit of 2,500,000 rials",
        description="Idempotency-Key: psp-settlement-9912",
        value={"amount": 2_500_000, "reference": "psp-settlement-9912"},
    ),
    Example(
        summary="Deposit available tomorrow morning (Tehran time)",
        value={
            "amount": 12_000_000,
            "available_at": "2026-12-03T09:00:00+03:30",
            "reference": "card-batch-1205",
        },
    ),
]
WITHDRAWAL = [
    Example(summary="Payout of 1,500,000 rials", value={"amount": 1_500_000, "reference": "payout-311"})
]
TRANSFER = [
    Example(
        summary="Pay a supplier 750,000 rials",
        value={
            "from_wallet_id": SHOP_WALLET,
            "to_wallet_id": SUPPLIER_WALLET,
            "amount": 750_000,
            "reference": "order-88231",
            "metadata": {"invoice": "INV-2026-0412"},
        },
    )
]
PLACE_HOLD = [
    Example(
        summary="Reserve 3,200,000 rials for an order until it ships",
        description="Idempotency-Key: order-88231-auth",
        value={
            "amount": 3_200_000,
            "expires_at": "2026-12-09T18:00:00+03:30",
            "reference": "order-88231",
            "metadata": {"basket": "B-5521"},
        },
    ),
    Example(summary="Reserve 500,000 rials for the default 7 days", value={"amount": 500_000}),
]
CAPTURE_HOLD = [
    Example(summary="Capture everything that remains, to the outside world", value={}),
    Example(
        summary="Capture 1,200,000 rials of it now (one item shipped); the rest stays reserved",
        value={"amount": 1_200_000},
    ),
    Example(
        summary="Pay a supplier 2,000,000 rials from it and release the rest",
        value={"amount": 2_000_000, "to_wallet_id": SUPPLIER_WALLET, "final": True},
    ),
]
COMMISSION_RULE = [
    Example(
        summary="0.5 % with a 5,000 rial floor and a 500,000 rial cap",
        value={"rate_bps": 50, "fixed": 0, "min_fee": 5_000, "max_fee": 500_000},
    )
]

_WALLET = {
    "id": SHOP_WALLET,
    "owner_id": "merchant-4711",
    "currency": "IRR",
    "status": "active",
    "balance": 2_487_500,
    "held": 500_000,
    "available": 1_987_500,
    "pending": 12_000_000,
    "created_at": "2026-12-02T08:15:04.691828Z",
    "updated_at": "2026-12-02T08:16:11.056703Z",
    "metadata": {"shop": "Tehran Books"},
}
_POSTED_DEPOSIT = {
    "id": "01a23695-2f4a-7c3e-8d21-6b9e0a4c1f77",
    "kind": "deposit",
    "status": "posted",
    "wallet_id": SHOP_WALLET,
    "from_wallet_id": None,
    "to_wallet_id": None,
    "currency": "IRR",
    "amount": 2_500_000,
    "fee": 12_500,
    "reference": "psp-settlement-9912",
    "metadata": {},
    "available_at": None,
    "created_at": "2026-12-02T08:16:11.056703Z",
    "posted_at": "2026-12-02T08:16:11.056703Z",
    "failure_reason": None,
    "hold_id": None,
}
_HOLD_ID = "01a23697-5d0b-7f19-a3c8-2e7d4b9f6a01"
_ACTIVE_HOLD = {
    "id": _HOLD_ID,
    "wallet_id": SHOP_WALLET,
    "status": "active",
    "amount": 3_200_000,
    "captured_amount": 1_200_000,
    "remaining": 2_000_000,
    "reference": "order-88231",
    "metadata": {"basket": "B-5521"},
    "expires_at": "2026-12-09T14:30:00Z",
    "created_at": "2026-12-02T08:20:45.118204Z",
    "closed_at": None,
}
_VOIDED_HOLD = _ACTIVE_HOLD | {"status": "voided", "remaining": 0, "closed_at": "2026-12-02T09:02:13.530117Z"}
_CAPTURE = _POSTED_DEPOSIT | {
    "id": "01a23698-8e41-7a06-b5d2-90c1f3e7a4b8",
    "kind": "transfer",
    "wallet_id": None,
    "from_wallet_id": SHOP_WALLET,
    "to_wallet_id": SUPPLIER_WALLET,
    "amount": 2_000_000,
    "fee": 10_000,
    "reference": "order-88231",
    "metadata": {"basket": "B-5521"},
    "created_at": "2026-12-02T09:41:30.204417Z",
    "posted_at": "2026-12-02T09:41:30.204417Z",
    "hold_id": _HOLD_ID,
}


def created_transaction(container: Any) -> ResponseSpec:
    return ResponseSpec(
        container,
        description="The transaction. " + REPLAY_NOTE,
        examples=[Example(summary="A posted deposit: 2,487,500 credited, 12,500 fee", value=_POSTED_DEPOSIT)],
    )


def wallet_response(container: Any, description: str) -> ResponseSpec:
    return ResponseSpec(
        container, description=description, examples=[Example(summary="A wallet", value=_WALLET)]
    )


def hold_response(container: Any, description: str) -> ResponseSpec:
    return ResponseSpec(
        container,
        description=description,
        examples=[
            Example(summary="An active hold, 1,200,000 of it captured", value=_ACTIVE_HOLD),
            Example(summary="A voided hold: what remained is released", value=_VOIDED_HOLD),
        ],
    )


def hold_page(container: Any) -> ResponseSpec:
    return ResponseSpec(
        container,
        description="Holds, newest first; `next_cursor` is null on the last page.",
        examples=[
            Example(
                summary="One page of a wallet's holds",
                value={"items": [_ACTIVE_HOLD], "next_cursor": "AaI2l10LfxmjyC59S59qAQ"},
            )
        ],
    )


def captured_transaction(container: Any) -> ResponseSpec:
    return ResponseSpec(
        container,
        description="The capture's transaction: a `withdrawal` (the money leaves) or, with `to_wallet_id`, "
        "a `transfer`, carrying the hold's id in `hold_id`. " + REPLAY_NOTE,
        examples=[
            Example(summary="2,000,000 rials of a hold paid to a supplier, 10,000 fee", value=_CAPTURE)
        ],
    )


# Request bodies' examples by the name of their Struct (api.schemas.RequestSchemaPlugin adds them).
REQUEST_EXAMPLES = {
    "OpenWalletRequest": OPEN_WALLET,
    "DepositRequest": DEPOSIT,
    "WithdrawalRequest": WITHDRAWAL,
    "TransferRequest": TRANSFER,
    "CommissionRuleRequest": COMMISSION_RULE,
    "PlaceHoldRequest": PLACE_HOLD,
    "CaptureHoldRequest": CAPTURE_HOLD,
}
