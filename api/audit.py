"""The ledger check over HTTP: wallet.verify_ledger() as the auditor role, within a time limit."""

from __future__ import annotations

import asyncpg
from litestar import Controller, get
from litestar.datastructures import State

from api.dependencies import Caller
from api.errors import ApiError, problem_responses
from api.schemas import LedgerReport, Violation, from_record
from api.scopes import requires
from core import ledger


class LedgerController(Controller):
    path = "/v1/ledger"
    tags = ("ledger",)

    @get(
        "/verify",
        **requires("ledger:audit"),
        operation_id="verifyLedger",
        summary="Check the ledger",
        responses=problem_responses("verify_timeout"),
    )
    async def verify(self, caller: Caller, state: State) -> LedgerReport:
        """Run every consistency check over the whole ledger (double entry per transaction, each
        balance against its entries, pending against scheduled deposits, the hash chains); `ok` is true
        when none finds a violation. Read-only, as the auditor role, within WALLET_VERIFY_TIMEOUT_SECONDS."""
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
            return await ledger.verify_ledger(connection)
        except asyncpg.QueryCanceledError:
            raise ApiError(
                503,
                "verify_timeout",
                f"the ledger check did not finish within {timeout_seconds} s; retry later",
                retry_after_seconds=timeout_seconds,
            ) from None
