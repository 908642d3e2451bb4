"""The worker's tasks. Each calls one ledger function through core.ledger; the money logic
stays in SQL.

settle_deposit is enqueued by wallet.deposit itself, in the transaction that schedules the
deposit; expire_hold by wallet.place_hold, in the transaction that places the hold, for its
expires_at. The periodic tasks keep the queue honest after crashes: stalled jobs of dead
workers are retried, due deposits and overdue holds without a live job are re-enqueued, old
jobs and idempotency keys are pruned. Tasks reach the database through the asyncpg pool the
worker puts in their context (jobs.app.run_worker).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from uuid import UUID

import asyncpg
import procrastinate

from core import ledger
from core.settings import Settings

logger = logging.getLogger("wallet.jobs")

# Idempotency keys are kept at least 24 hours (SPEC 6); we keep them 48.
IDEMPOTENCY_KEY_RETENTION = timedelta(hours=48)
# An expiry job that finds its hold not yet expired (it ran early: clock skew between the
# database's sessions, a job enqueued by hand) tries again this many seconds later.
HOLD_NOT_DUE_RETRY_SECONDS = 1
# wallet.expire_hold's SQLSTATE for a hold that does not exist.
HOLD_NOT_FOUND = "WN404"


class HoldNotDue(Exception):
    """wallet.expire_hold answered 'not_due': the job ran before the hold's expires_at."""


class ExpiryRetry(procrastinate.BaseRetryStrategy):
    """An expiry job that ran early is retried HOLD_NOT_DUE_RETRY_SECONDS later; any other
    error (lost connection, deadlock, a statement timeout) as a settlement is, with exponential
    backoff. Both share the attempt budget; past it the job ends, and the reconciler
    re-enqueues the hold once it is overdue by WALLET_RECONCILE_GRACE_SECONDS."""

    def __init__(self, transient: procrastinate.RetryStrategy, max_attempts: int) -> None:
        self.transient = transient
        self.max_attempts = max_attempts

    def get_retry_decision(
        self, *, exception: BaseException, job: procrastinate.jobs.Job
    ) -> procrastinate.RetryDecision | None:
        if isinstance(exception, HoldNotDue):
            if job.attempts >= self.max_attempts:
                return None
            return procrastinate.RetryDecision(retry_in={"seconds": HOLD_NOT_DUE_RETRY_SECONDS})
        if getattr(exception, "sqlstate", None) == HOLD_NOT_FOUND:
            return None  # no attempt can succeed
        return self.transient.get_retry_decision(exception=exception, job=job)


def build_tasks(settings: Settings) -> procrastinate.Blueprint:
    """The tasks, with the retry budget and intervals settings give."""
    tasks = procrastinate.Blueprint()

    # Wallet frozen or closed, lost connection, deadlock: retry with exponential backoff
    # (base^1, base^2, ... seconds). The last attempt fails the deposit instead of raising.
    settle_retry = procrastinate.RetryStrategy(
        max_attempts=settings.settle_max_retries,
        exponential_wait=settings.settle_retry_base_seconds,
    )

    @tasks.task(name="settle_deposit", queue="deposits", retry=settle_retry, pass_context=True)
    async def settle_deposit(context: procrastinate.JobContext, transaction_id: str) -> str:
        """Post a scheduled deposit that is due (exactly once; a repeat delivery changes nothing)."""
        outcome = await ledger.settle_deposit(
            _pool(context),
            UUID(transaction_id),
            last_attempt=context.job.attempts >= settings.settle_max_retries,
            # Other due deposits posted along with this one: when many fall due in the same
            # second, a handful of jobs post them all and the others find theirs posted.
            sweep_limit=settings.settle_sweep_limit,
        )
        logger.info("deposit %s: %s (attempt %s)", transaction_id, outcome, context.job.attempts + 1)
        return outcome

    expire_retry = ExpiryRetry(settle_retry, max_attempts=settings.settle_max_retries)

    @tasks.task(name="expire_hold", queue="holds", retry=expire_retry, pass_context=True)
    async def expire_hold(context: procrastinate.JobContext, hold_id: str) -> str:
        """Expire a hold at its expires_at, releasing its money (exactly once: a hold already
        captured, voided or expired is left as it is and its status returned).

        Early ('not_due'): the job must not end with the hold still active and no job left
        for it. It raises HoldNotDue, which ExpiryRetry retries a second later, until the
        hold is due; on the last attempt it ends instead, logged, and the periodic
        reconcile_hold_expiries re-enqueues the hold once it is overdue by the grace. The
        retry keeps the lag at about a second where the reconciler alone would add the grace
        and its 15 s period; the reconciler is the backstop for whatever a retry cannot cover.
        """
        attempt = context.job.attempts + 1
        outcome = await ledger.expire_hold(_pool(context), UUID(hold_id))
        if outcome == "not_due":
            if context.job.attempts < settings.settle_max_retries:
                logger.warning("hold %s: not due yet (attempt %s); retrying", hold_id, attempt)
                raise HoldNotDue(hold_id)
            logger.warning(
                "hold %s: not due yet (attempt %s, the last); left to the reconciler", hold_id, attempt
            )
        else:
            logger.info("hold %s: %s (attempt %s)", hold_id, outcome, attempt)
            if settings.expiry_sweep_limit:
                # Other due holds along with this one: when many fall due in the same second,
                # a handful of jobs expire them all and the others find theirs expired.
                swept = await ledger.expire_due_holds(_pool(context), settings.expiry_sweep_limit)
                if swept:
                    logger.info("hold %s: %s other due holds expired with it", hold_id, swept)
        return outcome

    @tasks.periodic(cron="* * * * * */15", periodic_id="every-15s")
    @tasks.task(
        name="reconcile_scheduled_deposits", queue="maintenance", queueing_lock="reconcile", pass_context=True
    )
    async def reconcile_scheduled_deposits(context: procrastinate.JobContext, timestamp: int) -> int:
        """Re-enqueue due scheduled deposits whose job is missing or failed."""
        grace = timedelta(seconds=settings.reconcile_grace_seconds)
        enqueued = await ledger.reconcile_scheduled_deposits(_pool(context), grace)
        if enqueued:
            logger.warning("reconciler re-enqueued %s scheduled deposits", enqueued)
        return enqueued

    @tasks.periodic(cron="* * * * * */15", periodic_id="every-15s")
    @tasks.task(
        name="reconcile_hold_expiries",
        queue="maintenance",
        queueing_lock="reconcile_holds",
        pass_context=True,
    )
    async def reconcile_hold_expiries(context: procrastinate.JobContext, timestamp: int) -> int:
        """Re-enqueue the expiry of active holds overdue for longer than the grace whose job is
        missing or failed."""
        grace = timedelta(seconds=settings.reconcile_grace_seconds)
        enqueued = await ledger.reconcile_hold_expiries(_pool(context), grace)
        if enqueued:
            logger.warning("reconciler re-enqueued the expiry of %s holds", enqueued)
        return enqueued

    @tasks.periodic(cron="* * * * * */10", periodic_id="every-10s")
    @tasks.task(
        name="retry_stalled_jobs", queue="maintenance", queueing_lock="retry_stalled", pass_context=True
    )
    async def retry_stalled_jobs(context: procrastinate.JobContext, timestamp: int) -> int:
        """Jobs left 'doing' by a worker that stopped sending heartbeats (killed) run again."""
        manager = context.app.job_manager
        stalled = await manager.get_stalled_jobs(seconds_since_heartbeat=settings.stalled_worker_seconds)
        for job in stalled:
            await manager.retry_job(job)
            logger.warning("retrying stalled job %s (%s)", job.id, job.task_name)
        return len(stalled)

    @tasks.periodic(cron="23 * * * *", periodic_id="hourly")
    @tasks.task(name="prune_old_jobs", queue="maintenance", queueing_lock="prune_jobs", pass_context=True)
    async def prune_old_jobs(context: procrastinate.JobContext, timestamp: int) -> None:
        """Delete finished jobs past their retention."""
        await context.app.job_manager.delete_old_jobs(
            nb_hours=settings.job_retention_hours,
            include_failed=True,
            include_cancelled=True,
            include_aborted=True,
        )

    @tasks.periodic(cron="17 * * * *", periodic_id="hourly")
    @tasks.task(
        name="prune_idempotency_keys", queue="maintenance", queueing_lock="prune_keys", pass_context=True
    )
    async def prune_idempotency_keys(context: procrastinate.JobContext, timestamp: int) -> int:
        """Forget idempotency keys past their retention."""
        removed = await ledger.prune_idempotency_keys(_pool(context), IDEMPOTENCY_KEY_RETENTION)
        logger.info("pruned %s idempotency keys", removed)
        return removed

    return tasks


def _pool(context: procrastinate.JobContext) -> asyncpg.Pool:
    return context.additional_context["pool"]
