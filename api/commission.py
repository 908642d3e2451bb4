"""Commission rules: the rules in force, and setting one."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, put
from litestar.params import Parameter

from api.dependencies import Caller
from api.errors import ApiError, problem_responses
from api.schemas import CommissionRule, CommissionRuleRequest, CommissionRules, Operation, from_record
from api.scopes import requires
from core import ledger


class CommissionController(Controller):
    path = "/v1/commission-rules"
    tags = ("commission",)

    @get(
        "/",
        **requires("commissions:read"),
        operation_id="listCommissionRules",
        summary="Commission rules in force",
        responses=problem_responses(),
    )
    async def list_rules(self, caller: Caller) -> CommissionRules:
        """Per operation (deposit, withdrawal, transfer) the default rule and per-owner overrides; an
        owner's token sees, per operation, the one rule that applies to it.
        `fee = clamp(fixed + round_half_up(amount * rate_bps / 10000), min_fee, max_fee)`."""
        if caller.owner_id is None:
            records = await ledger.commission_rules_in_force(caller.pool)
        else:
            records = await ledger.commission_rules_for_owner(caller.pool, caller.owner_id)
        return CommissionRules(items=[from_record(CommissionRule, record) for record in records])

    @put(
        "/{operation:str}",
        **requires("commissions:write"),
        operation_id="setCommissionRule",
        summary="Set a commission rule",
        responses=problem_responses("payload_too_large"),
    )
    async def set_rule(
        self,
        operation: Annotated[Operation, Parameter(description="deposit, withdrawal or transfer")],
        data: CommissionRuleRequest,
        caller: Caller,
    ) -> CommissionRule:
        """Put a rule in force for operations created from now on (a scheduled deposit keeps the fee
        fixed when it was scheduled); the old rule stays in history. Service tokens only."""
        if caller.owner_id is not None:
            raise ApiError(403, "forbidden", "commission rules are set by service tokens only")
        record = await ledger.set_commission_rule(
            caller.pool,
            caller.sub,
            operation,
            data.owner_id,
            data.rate_bps,
            data.fixed,
            data.min_fee,
            data.max_fee,
        )
        return from_record(CommissionRule, record)
