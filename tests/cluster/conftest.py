"""Three `wallet serve` replicas on one database, for the cluster test (its workers are the
`workers` fixture of tests/conftest.py).

A replica is a `wallet serve` process on a port of its own that the test can SIGTERM,
SIGKILL and start again on the same port, as a pod behind a load balancer would be
replaced. Its output goes to a log file under tmp_path whose tail is shown in failures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import Server, api_server


@pytest.fixture
def replicas(database_url: str, tmp_path: Path) -> Iterator[list[Server]]:
    """Three `wallet serve` replicas on this test's database, started; stopped at the end."""
    group = [
        api_server(database_url, name=f"replica {number}", log_path=tmp_path / f"replica-{number}.log")
        for number in (1, 2, 3)
    ]
    try:
        for replica in group:
            replica.start()
        yield group
    finally:
        for replica in group:
            replica.stop()
