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
    "available": 2_487_500,
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


# Request bodies' examples by the name of their Struct (api.schemas.RequestSchemaPlugin adds them).
REQUEST_EXAMPLES = {
    "OpenWalletRequest": OPEN_WALLET,
    "DepositRequest": DEPOSIT,
    "WithdrawalRequest": WITHDRAWAL,
    "TransferRequest": TRANSFER,
    "CommissionRuleRequest": COMMISSION_RULE,
}
