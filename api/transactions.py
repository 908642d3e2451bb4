"""Transactions: read one, and cancel a scheduled deposit."""

from __future__ import annotations

from uuid import UUID

from litestar import Controller, Response, get, post

from api.dependencies import Caller, Write
from api.errors import problem_responses
from api.responses import ok
from api.schemas import Transaction, transaction_from_record
from api.scopes import requires
from core import ledger


class TransactionController(Controller):
    path = "/v1/transactions"
    tags = ("transactions",)

    @get(
        "/{transaction_id:str}",
        **requires("wallets:read"),
        operation_id="getTransaction",
        summary="Read a transaction",
        responses=problem_responses("not_found"),
    )
    async def get_transaction(self, transaction_id: UUID, caller: Caller) -> Transaction:
        """A transaction by id, with its status (scheduled, posted, canceled or failed, with
        `failure_reason`); either side of a transfer may read it. Reads lock nothing."""
        record = await ledger.get_transaction(caller.pool, caller.owner_id, transaction_id)
        return transaction_from_record(record)

    @post(
        "/{transaction_id:str}/cancel",
        **requires("deposits:write"),
        operation_id="cancelDeposit",
        summary="Cancel a scheduled deposit",
        status_code=200,
        responses=problem_responses("not_found", "transaction_not_cancelable", "idempotency_key_reused"),
    )
    async def cancel(self, transaction_id: UUID, write: Write) -> Response[Transaction]:
        """Cancel a deposit that has not settled yet; its pending amount is released. Locks the deposit
        row, then the wallet (the order settlement uses), so a cancel racing the settlement ends in exactly
        one outcome. Idempotent with `Idempotency-Key`."""
        record = await ledger.cancel_deposit(write.pool, write.actor, transaction_id)
        return ok(transaction_from_record(record), record)
