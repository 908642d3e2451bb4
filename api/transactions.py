"""Transactions, commission rules and the ledger check: the read side and the settings."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import asyncpg
from litestar import Controller, Response, get, post, put
from litestar.datastructures import State
from litestar.params import Parameter

from api.errors import ApiError, problem_responses
from api.metrics import move_money
from api.plumbing import Caller, Write, ok
from api.schemas import (
    CommissionRule,
    CommissionRuleRequest,
    CommissionRules,
    LedgerReport,
    Operation,
    Transaction,
    Violation,
    from_record,
)


class TransactionController(Controller):
    path = "/v1/transactions"
    tags = ("transactions",)

    @get(
        "/{transaction_id:str}",
        opt={"scope": "wallets:read"},
        operation_id="getTransaction",
        responses=problem_responses(404),
    )
    async def get_transaction(self, transaction_id: UUID, caller: Caller) -> Transaction:
        """Read a transaction (either side of a transfer may read it)."""
        record = await caller.pool.fetchrow(
            "SELECT * FROM wallet.get_transaction($1, $2)", caller.owner_id, transaction_id
        )
        return from_record(Transaction, record)

    @post(
        "/{transaction_id:str}/cancel",
        opt={"scope": "deposits:write"},
        operation_id="cancelDeposit",
        status_code=200,
        responses=problem_responses(
            404, 409, codes={409: "transaction_not_cancelable, idempotency_key_reused"}
        ),
    )
    async def cancel(self, transaction_id: UUID, write: Write) -> Response[Transaction]:
        """Cancel a scheduled deposit before it settles; its pending amount is released."""
        record = await move_money(
            "cancel", write, "SELECT * FROM wallet.cancel_deposit($1, $2, $3, $4, $5)", transaction_id
        )
        return ok(from_record(Transaction, record), record)


class CommissionController(Controller):
    path = "/v1/commission-rules"
    tags = ("commission",)

    @get(
        "/",
        opt={"scope": "commissions:read"},
        operation_id="listCommissionRules",
        responses=problem_responses(),
    )
    async def list_rules(self, caller: Caller) -> CommissionRules:
        """The rules in force: per operation a default and per-owner overrides; an owner's token
        sees, per operation, the one rule that applies to its owner."""
        if caller.owner_id is None:
            records = await caller.pool.fetch("SELECT * FROM wallet.commission_rules_in_force()")
        else:
            records = await caller.pool.fetch(
                "SELECT * FROM wallet.commission_rules_for_owner($1)", caller.owner_id
            )
        return CommissionRules(items=[from_record(CommissionRule, record) for record in records])

    @put(
        "/{operation:str}",
        opt={"scope": "commissions:write"},
        operation_id="setCommissionRule",
        responses=problem_responses(413, codes={403: "forbidden (an owner's token may set no rule)"}),
    )
    async def set_rule(
        self,
        operation: Annotated[Operation, Parameter(description="deposit, withdrawal or transfer")],
        data: CommissionRuleRequest,
        caller: Caller,
    ) -> CommissionRule:
        """Put a rule in force for operations created from now on; the old rule stays in history."""
        if caller.owner_id is not None:
            raise ApiError(403, "forbidden", "commission rules are set by service tokens only")
        record = await caller.pool.fetchrow(
            "SELECT * FROM wallet.set_commission_rule($1, $2, $3, $4, $5, $6, $7)",
            caller.sub,
            operation,
            data.owner_id,
            data.rate_bps,
            data.fixed,
            data.min_fee,
            data.max_fee,
        )
        return from_record(CommissionRule, record)


class LedgerController(Controller):
    path = "/v1/ledger"
    tags = ("ledger",)

    @get(
        "/verify",
        opt={"scope": "ledger:audit"},
        operation_id="verifyLedger",
        responses=problem_responses(codes={503: "unavailable, verify_timeout (with Retry-After)"}),
    )
    async def verify(self, caller: Caller, state: State) -> LedgerReport:
        """Check the whole ledger; ok is true when no check finds a violation."""
        records = await _verify_ledger(caller.pool, state.settings.verify_timeout_seconds)
        violations = [from_record(Violation, record) for record in records]
        return LedgerReport(ok=not violations, violations=violations)


async def _verify_ledger(pool: asyncpg.Pool, timeout_seconds: int) -> list[asyncpg.Record]:
    """wallet.verify_ledger() as the auditor role (the API's own role may not run it), read-only,
    within timeout_seconds: past it, 503 verify_timeout. SET LOCAL ends with the transaction, so
    the connection goes back to the pool as it came."""
    async with pool.acquire() as connection, connection.transaction(readonly=True):
        await connection.execute(
            f"SET LOCAL ROLE wallet_auditor; SET LOCAL statement_timeout = '{int(timeout_seconds)}s'"
        )
        try:
            return await connection.fetch("SELECT check_name, detail FROM wallet.verify_ledger()")
        except asyncpg.QueryCanceledError:
            raise ApiError(
                503,
                "verify_timeout",
                f"the ledger check did not finish within {timeout_seconds} s; retry later",
                retry_after_seconds=timeout_seconds,
            ) from None
