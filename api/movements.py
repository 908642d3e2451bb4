"""Money movements: deposits, withdrawals and transfers. Each is one ledger function call."""

from __future__ import annotations

from uuid import UUID

from litestar import Controller, Response, post

from api.errors import problem_responses
from api.metrics import move_money
from api.plumbing import Write, created
from api.schemas import DepositRequest, Transaction, TransferRequest, WithdrawalRequest, from_record

MOVEMENT_409 = "wallet_not_active, idempotency_key_reused"
DEPOSIT_CODES = {409: MOVEMENT_409, 422: "amount_below_fee, balance_limit_exceeded"}
WITHDRAWAL_CODES = {409: MOVEMENT_409, 422: "insufficient_funds"}
TRANSFER_CODES = {
    409: MOVEMENT_409,
    422: "insufficient_funds, currency_mismatch, same_wallet, balance_limit_exceeded",
}


class MovementController(Controller):
    path = "/v1"
    tags = ("money movements",)

    @post(
        "/wallets/{wallet_id:str}/deposits",
        opt={"scope": "deposits:write"},
        operation_id="deposit",
        responses=problem_responses(404, 409, 413, 422, codes=DEPOSIT_CODES),
    )
    async def deposit(self, wallet_id: UUID, data: DepositRequest, write: Write) -> Response[Transaction]:
        """Deposit into a wallet: it is credited amount - fee, now or at available_at."""
        record = await move_money(
            "deposit",
            write,
            "SELECT * FROM wallet.deposit($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            wallet_id,
            data.amount,
            data.reference,
            data.metadata,
            data.available_at,
        )
        return created(from_record(Transaction, record), record, f"/v1/transactions/{record['id']}")

    @post(
        "/wallets/{wallet_id:str}/withdrawals",
        opt={"scope": "withdrawals:write"},
        operation_id="withdraw",
        responses=problem_responses(404, 409, 413, 422, codes=WITHDRAWAL_CODES),
    )
    async def withdraw(self, wallet_id: UUID, data: WithdrawalRequest, write: Write) -> Response[Transaction]:
        """Withdraw from a wallet: it is debited amount + fee."""
        record = await move_money(
            "withdrawal",
            write,
            "SELECT * FROM wallet.withdraw($1, $2, $3, $4, $5, $6, $7, $8)",
            wallet_id,
            data.amount,
            data.reference,
            data.metadata,
        )
        return created(from_record(Transaction, record), record, f"/v1/transactions/{record['id']}")

    @post(
        "/transfers",
        opt={"scope": "transfers:write"},
        operation_id="transfer",
        responses=problem_responses(404, 409, 413, 422, codes=TRANSFER_CODES),
    )
    async def transfer(self, data: TransferRequest, write: Write) -> Response[Transaction]:
        """Transfer between wallets: the sender pays amount + fee, the receiver gets amount."""
        record = await move_money(
            "transfer",
            write,
            "SELECT * FROM wallet.transfer($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            data.from_wallet_id,
            data.to_wallet_id,
            data.amount,
            data.reference,
            data.metadata,
        )
        return created(from_record(Transaction, record), record, f"/v1/transactions/{record['id']}")
