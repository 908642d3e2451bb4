"""Money movements: deposits, withdrawals and transfers. Each is one ledger function call."""

from __future__ import annotations

from uuid import UUID

from litestar import Controller, Response, post

from api.dependencies import Write
from api.errors import problem_responses
from api.examples import created_transaction
from api.responses import created
from api.schemas import (
    DepositRequest,
    Transaction,
    TransferRequest,
    WithdrawalRequest,
    transaction_from_record,
)
from api.scopes import requires
from core import ledger

MOVEMENT_CODES = ("not_found", "wallet_not_active", "idempotency_key_reused", "payload_too_large")


class MovementController(Controller):
    path = "/v1"
    tags = ("money movements",)

    @post(
        "/wallets/{wallet_id:str}/deposits",
        **requires("deposits:write"),
        operation_id="deposit",
        summary="Deposit",
        responses={201: created_transaction(Transaction)}
        | problem_responses(*MOVEMENT_CODES, "amount_below_fee", "balance_limit_exceeded"),
    )
    async def deposit(self, wallet_id: UUID, data: DepositRequest, write: Write) -> Response[Transaction]:
        """Credit the wallet `amount - fee` (the deposit rule in force gives the fee). Without
        `available_at` (or with one within a second) it posts at once; with one up to 366 days ahead it is
        scheduled: `pending` grows now, and the worker settles it exactly once at that time.

        Locks the wallet row for the write; the whole deposit is one database transaction. Idempotent with
        `Idempotency-Key`: a retry returns the first response and moves no money again."""
        record = await ledger.deposit(
            write.pool, write.actor, wallet_id, data.amount, data.reference, data.metadata, data.available_at
        )
        return created(transaction_from_record(record), record, f"/v1/transactions/{record['id']}")

    @post(
        "/wallets/{wallet_id:str}/withdrawals",
        **requires("withdrawals:write"),
        operation_id="withdraw",
        summary="Withdraw",
        responses={201: created_transaction(Transaction)}
        | problem_responses(*MOVEMENT_CODES, "insufficient_funds"),
    )
    async def withdraw(self, wallet_id: UUID, data: WithdrawalRequest, write: Write) -> Response[Transaction]:
        """Debit the wallet `amount + fee` (the withdrawal rule in force gives the fee); the money leaves
        to the outside world. `422 insufficient_funds` when `available` cannot cover it; nothing moves then.

        Locks the wallet row, checks and writes in one transaction, so parallel withdrawals never
        overdraw. Idempotent with `Idempotency-Key`."""
        record = await ledger.withdraw(
            write.pool, write.actor, wallet_id, data.amount, data.reference, data.metadata
        )
        return created(transaction_from_record(record), record, f"/v1/transactions/{record['id']}")

    @post(
        "/transfers",
        **requires("transfers:write"),
        operation_id="transfer",
        summary="Transfer between wallets",
        responses={201: created_transaction(Transaction)}
        | problem_responses(
            *MOVEMENT_CODES,
            "insufficient_funds",
            "currency_mismatch",
            "same_wallet",
            "balance_limit_exceeded",
        ),
    )
    async def transfer(self, data: TransferRequest, write: Write) -> Response[Transaction]:
        """The sender pays `amount + fee`, the receiver gets `amount` (same currency). An owner's token
        sends from its own wallets, to any wallet.

        Locks both wallet rows in wallet-id order (no deadlock between opposite transfers), checks and
        writes in one transaction. Idempotent with `Idempotency-Key`."""
        record = await ledger.transfer(
            write.pool,
            write.actor,
            data.from_wallet_id,
            data.to_wallet_id,
            data.amount,
            data.reference,
            data.metadata,
        )
        return created(transaction_from_record(record), record, f"/v1/transactions/{record['id']}")
