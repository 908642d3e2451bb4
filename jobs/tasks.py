"""Background tasks. Each calls one ledger function; the money logic stays in SQL."""

from __future__ import annotations

import logging

import procrastinate

logger = logging.getLogger("wallet.jobs")

tasks = procrastinate.Blueprint()

# Idempotency keys are kept at least 24 hours (SPEC 6); we keep them 48.
IDEMPOTENCY_KEY_RETENTION = "48 hours"


@tasks.periodic(cron="17 * * * *", periodic_id="hourly")
@tasks.task(name="prune_idempotency_keys", queue="maintenance", pass_context=True)
async def prune_idempotency_keys(context: procrastinate.JobContext, timestamp: int) -> int:
    """Forget idempotency keys past their retention."""
    row = await context.app.connector.execute_query_one_async(
        "SELECT wallet.prune_idempotency_keys(%(retention)s::interval) AS removed",
        retention=IDEMPOTENCY_KEY_RETENTION,
    )
    logger.info("pruned %s idempotency keys", row["removed"])
    return row["removed"]
