"""Money movements: deposits, withdrawals and transfers. Each is one ledger function call."""

from __future__ import annotations

from uuid import UUID

from litestar import Controller, Response, post

from api.dependencies import Write
from api.errors import problem_responses
from api.responses import created
from api.schemas import DepositRequest, Transaction, TransferRequest, WithdrawalRequest, from_record
from core import ledger

MOVEMENT_CODES = ("not_found", "wallet_not_active", "idempotency_key_reused", "payload_too_large")


class MovementController(Controller):
    path = "/v1"
    tags = ("money movements",)

    @post(
        "/wallets/{wallet_id:str}/deposits",
        opt={"scope": "deposits:write"},
        operation_id="deposit",
        responses=problem_responses(*MOVEMENT_CODES, "amount_below_fee", "balance_limit_exceeded"),
    )
    async def deposit(self, wallet_id: UUID, data: DepositRequest, write: Write) -> Response[Transaction]:
        """Deposit into a wallet: it is credited amount - fee, now or at available_at."""
        record = await ledger.deposit(
            write.pool, write.actor, wallet_id, data.amount, data.reference, data.metadata, data.available_at
        )
        return created(from_record(Transaction, record), record, f"/v1/transactions/{record['id']}")

    @post(
        "/wallets/{wallet_id:str}/withdrawals",
        opt={"scope": "withdrawals:write"},
        operation_id="withdraw",
        responses=problem_responses(*MOVEMENT_CODES, "insufficient_funds"),
    )
    async def withdraw(self, wallet_id: UUID, data: WithdrawalRequest, write: Write) -> Response[Transaction]:
        """Withdraw from a wallet: it is debited amount + fee."""
        record = await ledger.withdraw(
            write.pool, write.actor, wallet_id, data.amount, data.reference, data.metadata
        )
        return created(from_record(Transaction, record), record, f"/v1/transactions/{record['id']}")

    @post(
        "/transfers",
        opt={"scope": "transfers:write"},
        operation_id="transfer",
        responses=problem_responses(
            *MOVEMENT_CODES,
            "insufficient_funds",
            "currency_mismatch",
            "same_wallet",
            "balance_limit_exceeded",
        ),
    )
    async def transfer(self, data: TransferRequest, write: Write) -> Response[Transaction]:
        """Transfer between wallets: the sender pays amount + fee, the receiver gets amount."""
        record = await ledger.transfer(
            write.pool,
            write.actor,
            data.from_wallet_id,
            data.to_wallet_id,
            data.amount,
            data.reference,
            data.metadata,
        )
        return created(from_record(Transaction, record), record, f"/v1/transactions/{record['id']}")
