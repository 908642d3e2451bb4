"""The procrastinate app for `wallet worker`; its tasks are in jobs/tasks.py."""

from __future__ import annotations

import procrastinate

from api.database import database_url
from jobs.tasks import tasks

# Where migration 0007 put procrastinate's tables and functions.
QUEUE_SCHEMA = "procrastinate"


def create_app(url: str | None = None, concurrency: int = 1) -> procrastinate.App:
    connector = procrastinate.PsycopgConnector(
        conninfo=url or database_url(),
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
    app.add_tasks_from(tasks, namespace="wallet")
    return app
