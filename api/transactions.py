"""Transactions: read one, and cancel a scheduled deposit."""

from __future__ import annotations

from uuid import UUID

from litestar import Controller, Response, get, post

from api.dependencies import Caller, Write
from api.errors import problem_responses
from api.responses import ok
from api.schemas import Transaction, from_record
from core import ledger


class TransactionController(Controller):
    path = "/v1/transactions"
    tags = ("transactions",)

    @get(
        "/{transaction_id:str}",
        opt={"scope": "wallets:read"},
        operation_id="getTransaction",
        responses=problem_responses("not_found"),
    )
    async def get_transaction(self, transaction_id: UUID, caller: Caller) -> Transaction:
        """Read a transaction (either side of a transfer may read it)."""
        record = await ledger.get_transaction(caller.pool, caller.owner_id, transaction_id)
        return from_record(Transaction, record)

    @post(
        "/{transaction_id:str}/cancel",
        opt={"scope": "deposits:write"},
        operation_id="cancelDeposit",
        status_code=200,
        responses=problem_responses("not_found", "transaction_not_cancelable", "idempotency_key_reused"),
    )
    async def cancel(self, transaction_id: UUID, write: Write) -> Response[Transaction]:
        """Cancel a scheduled deposit before it settles; its pending amount is released."""
        record = await ledger.cancel_deposit(write.pool, write.actor, transaction_id)
        return ok(from_record(Transaction, record), record)
