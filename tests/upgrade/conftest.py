"""The previous release (extracted once per session) and empty databases of the test's own."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from core.database import with_database

from .previous_release import PreviousRelease

OWNER_ROLE = "wallet_owner"


@dataclass(frozen=True)
class Database:
    name: str
    url: str  # as the test server's superuser
    owner_url: str  # as wallet_owner, who migrates it (as in production)


NewDatabase = Callable[[], Database]


@pytest.fixture(scope="session")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> PreviousRelease:
    """The previous release, extracted from tests/upgrade/v0.1.0.tar.gz."""
    return PreviousRelease.extract(tmp_path_factory.mktemp("previous-release"))


@pytest.fixture
def new_database(postgres_url: str, owner_url: str) -> Iterator[NewDatabase]:
    """new_database(): an empty database owned by wallet_owner, as a new install meets it;
    every one is dropped when the test ends."""
    names: list[str] = []

    def create() -> Database:
        name = f"wallet_upgrade_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}" OWNER {OWNER_ROLE}')
        names.append(name)
        return Database(name, with_database(postgres_url, name), with_database(owner_url, name))

    yield create
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        for name in names:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def log_folder(tmp_path: Path) -> Path:
    """Where the test's processes write their output (failures show its tail)."""
    folder = tmp_path / "logs"
    folder.mkdir()
    return folder
