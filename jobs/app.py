"""The worker: procrastinate's app (its queue in schema procrastinate) and the asyncpg pool
its tasks call the ledger through."""

from __future__ import annotations

import asyncio
import logging
import signal

import procrastinate
import procrastinate.exceptions

from core.database import create_pool
from core.settings import Settings
from jobs.tasks import build_tasks

logger = logging.getLogger("wallet.jobs")

# Where migration 0007 put procrastinate's tables and functions.
QUEUE_SCHEMA = "procrastinate"
RESTART_DELAY_SECONDS = 1.0
HEARTBEATS_PER_STALL_WINDOW = 3


def create_app(settings: Settings, url: str, concurrency: int) -> procrastinate.App:
    connector = procrastinate.PsycopgConnector(
        conninfo=url,
        # One connection per concurrent job, plus the listener and the periodic deferrer.
        min_size=1,
        max_size=concurrency + 2,
        # Queue bookkeeping (fetching, finishing) need not wait for a WAL flush: lost in a
        # crash, a job runs again, harmlessly. Settlements themselves commit durably
        # (wallet.settle_deposit turns synchronous_commit back on for its transaction).
        # procrastinate names its tables and functions unqualified: they are in schema
        # procrastinate, and public (where others may create objects) is not searched.
        kwargs={"options": f"-c synchronous_commit=off -c search_path={QUEUE_SCHEMA}"},
    )
    app = procrastinate.App(connector=connector)
    app.add_tasks_from(build_tasks(settings), namespace="wallet")
    return app


def worker_queues(app: procrastinate.App) -> list[str]:
    """The queues of this release's tasks (deposits, holds, maintenance), which its workers
    fetch from. Named rather than "every queue": a job of a task this release does not know
    (one a later release's SQL enqueues on a queue of its own, during a rolling deploy) is
    left waiting for a worker that knows it, instead of being fetched here and failed as
    "task not found"."""
    return sorted({task.queue for name, task in app.tasks.items() if name.startswith("wallet:")})


async def run_worker(settings: Settings, url: str, concurrency: int) -> None:
    """Run jobs until SIGTERM or SIGINT, which let running jobs finish. A lost database
    connection restarts the worker; the jobs it was running are retried as stalled."""
    app = create_app(settings, url, concurrency)
    async with app.open_async(), create_pool(settings, url, min_size=1, max_size=concurrency) as pool:
        while True:
            try:
                await app.run_worker_async(
                    queues=worker_queues(app),
                    concurrency=concurrency,
                    fetch_job_polling_interval=settings.worker_poll_seconds,
                    listen_notify=settings.worker_listen_notify,
                    install_signal_handlers=True,
                    # Three heartbeats fit in the stall window, so a live worker never looks dead.
                    update_heartbeat_interval=settings.stalled_worker_seconds / HEARTBEATS_PER_STALL_WINDOW,
                    additional_context={"pool": pool},
                )
                return  # stopped by SIGTERM or SIGINT
            except procrastinate.exceptions.ConnectorException:
                logger.warning("worker lost its database connection; restarting", exc_info=True)
                if await _stop_requested_within(RESTART_DELAY_SECONDS):
                    return


async def _stop_requested_within(seconds: float) -> bool:
    """Wait, honouring SIGTERM/SIGINT (the worker's own handlers are off between runs)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(stop_signal, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
    finally:
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(stop_signal)
    return stop.is_set()
