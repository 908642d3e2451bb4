"""The procrastinate app for `wallet worker`; its tasks are in jobs/tasks.py."""

from __future__ import annotations

import procrastinate

from api.database import database_url
from jobs.tasks import tasks


def create_app(url: str | None = None) -> procrastinate.App:
    connector = procrastinate.PsycopgConnector(conninfo=url or database_url())
    app = procrastinate.App(connector=connector)
    app.add_tasks_from(tasks, namespace="wallet")
    return app
