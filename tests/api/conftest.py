"""A `wallet serve` shared by the API tests of a session, and an HTTP client on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.databases import cloned_database
from tests.support.processes import api_server
from tests.support.tokens import TokenFactory, bearer


@pytest.fixture(scope="session")
def shared_database_url(postgres_url: str, template_database: str) -> Iterator[str]:
    """One migrated database for the session's shared server; tests isolate by their own wallets."""
    with cloned_database(postgres_url, template_database, prefix="wallet_api") as url:
        yield url


@pytest.fixture(scope="session")
def api_url(shared_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a `wallet serve` shared by the session (do not change global state
    such as default commission rules through it; use `fresh_api` for that)."""
    log_path: Path = tmp_path_factory.mktemp("api") / "serve.log"
    with api_server(shared_database_url, log_path=log_path) as server:
        yield server.base_url


@pytest.fixture
def client(api_url: str, token: TokenFactory) -> Iterator[httpx.Client]:
    """An HTTP client on the shared server, authenticated with every scope as a service."""
    with httpx.Client(base_url=api_url, headers=bearer(token()), timeout=30) as http:
        yield http
