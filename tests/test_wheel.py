"""The built wheel, not the source tree: it carries migrations/ and sql/ and migrates a database.

The wheel is built as the Containerfile builds it (pip wheel, hatchling in an isolated build
environment) and installed into a fresh virtual environment of its own. The project's
dependencies are not installed again: a .pth file makes the test environment's site-packages
importable after the wheel's own, and plain path lines of a .pth are not site directories, so
the editable install's hook there is never run. Every command runs from a temporary folder,
never the repo, and the test asserts that `api` was imported from the wheel.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import sysconfig
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from core.database import with_database

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = "core/_schema"  # where pyproject.toml's force-include puts migrations/ and sql/
COMMAND_TIMEOUT_SECONDS = 120
START_TIMEOUT_SECONDS = 30


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(folder), str(ROOT)],
        cwd=folder,
        check=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )
    [built] = folder.glob("wallet-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_environment(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed; returns its bin folder."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, cwd=venv)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)],
        cwd=venv,
        check=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=venv,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    dependencies = sysconfig.get_paths()["purelib"]
    (Path(site_packages) / "wallet_test_dependencies.pth").write_text(dependencies + "\n")
    return venv / "bin"


def _run(bin_folder: Path, *arguments: str, database_url: str | None = None) -> subprocess.CompletedProcess:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("WALLET_") and key not in {"PYTHONPATH", "DATABASE_URL"}
    }
    if database_url is not None:
        environment["DATABASE_URL"] = database_url
    return subprocess.run(
        [str(bin_folder / arguments[0]), *arguments[1:]],
        cwd=bin_folder.parent,
        env=environment,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )


@pytest.fixture
def empty_database(postgres_url: str, owner_url: str) -> Iterator[tuple[str, str]]:
    """A new, empty database owned by the ledger's owner: (owner's URL, superuser's URL)."""
    name = f"wallet_wheel_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}" OWNER wallet_owner')
    yield with_database(owner_url, name), with_database(postgres_url, name)
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _repo_files(folder: str, pattern: str) -> set[str]:
    return {path.relative_to(ROOT).as_posix() for path in (ROOT / folder).glob(pattern) if path.is_file()}


def test_wheel_carries_every_migration_and_sql_file(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())

    expected = _repo_files("migrations", "*") | _repo_files("sql", "**/*.sql")
    assert {"migrations/0003_procrastinate.py", "sql/transfer.sql", "sql/bootstrap/roles.sql"} <= expected
    assert {f"{PACKAGED}/{name}" for name in expected} <= names
    assert not [name for name in names if name.startswith(("sql/", "migrations/"))]
    assert not [name for name in names if "__pycache__" in name]


def test_wheel_finds_its_own_files_and_reapplies_sql_but_not_the_bootstrap(wheel_environment):
    probe = _run(
        wheel_environment,
        "python",
        "-c",
        "import core, core.migrate as m; print(core.__file__); print(m.MIGRATIONS_DIR); print(m.SQL_DIR);"
        " print(' '.join(p.relative_to(m.SQL_DIR).as_posix() for p in m.sql_files()))",
    )
    assert probe.returncode == 0, probe.stderr
    package, migrations, sql, reapplied = probe.stdout.splitlines()
    installed = wheel_environment.parent
    for path in (package, migrations, sql):
        assert Path(path).is_relative_to(installed), path
    assert Path(migrations).name == "migrations" and Path(sql).name == "sql"
    assert sorted(reapplied.split()) == sorted(path.name for path in (ROOT / "sql").glob("*.sql"))
    assert not [name for name in reapplied.split() if "bootstrap" in name or name == "roles.sql"]


def test_wallet_migrate_and_verify_from_the_wheel_build_a_consistent_ledger(
    wheel_environment, empty_database, db
):
    owner_url, superuser_url = empty_database

    first = _run(wheel_environment, "wallet", "migrate", database_url=owner_url)
    assert first.returncode == 0, first.stderr
    assert "0001_ledger_schema" in first.stdout and "0003_procrastinate" in first.stdout
    again = _run(wheel_environment, "wallet", "migrate", database_url=owner_url)
    assert again.returncode == 0, again.stderr
    assert "none (up to date)" in again.stdout

    with psycopg.connect(superuser_url, autocommit=True) as connection:
        assert connection.execute("SELECT to_regprocedure('wallet.verify_ledger()')").fetchone()[0]
        assert connection.execute("SELECT * FROM wallet.verify_ledger()").fetchall() == []
        # The same functions as the source tree's `wallet migrate` built (the template's clone).
        assert _functions(connection) == _functions(db)

    verify = _run(wheel_environment, "wallet", "verify", database_url=owner_url)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "ledger consistent" in verify.stdout


def test_wallet_serve_and_worker_from_the_wheel_start_and_stop_cleanly(
    wheel_environment, empty_database, unused_tcp_port
):
    owner_url, superuser_url = empty_database
    assert _run(wheel_environment, "wallet", "migrate", database_url=owner_url).returncode == 0

    with _started(wheel_environment, superuser_url, "serve", "--port", str(unused_tcp_port)) as server:
        _wait_for(server, lambda: httpx.get(f"http://127.0.0.1:{unused_tcp_port}/readyz").status_code == 200)

    with _started(wheel_environment, superuser_url, "worker") as worker:

        def registered() -> bool:
            with psycopg.connect(superuser_url, autocommit=True) as connection:
                return bool(
                    connection.execute("SELECT count(*) FROM procrastinate.procrastinate_workers").fetchone()[
                        0
                    ]
                )

        _wait_for(worker, registered)


@contextlib.contextmanager
def _started(bin_folder: Path, database_url: str, *arguments: str) -> Iterator[subprocess.Popen]:
    """`wallet <arguments>` from the wheel; on leaving, SIGTERM must stop it with exit 0."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("WALLET_") and key not in {"PYTHONPATH", "DATABASE_URL"}
    }
    environment.update(
        DATABASE_URL=database_url, WALLET_JWT_SECRET="wheel-test-" + "x" * 40, WALLET_LOG_LEVEL="WARNING"
    )
    process = subprocess.Popen(
        [str(bin_folder / "wallet"), *arguments], cwd=bin_folder.parent, env=environment
    )
    try:
        yield process
        process.terminate()
        assert process.wait(timeout=START_TIMEOUT_SECONDS) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _wait_for(process: subprocess.Popen, condition) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        assert process.poll() is None, f"{process.args} exited with {process.returncode}"
        with contextlib.suppress(httpx.HTTPError, psycopg.Error):
            if condition():
                return
        assert time.monotonic() < deadline, f"{process.args}: not ready within {START_TIMEOUT_SECONDS} s"
        time.sleep(0.1)


def _functions(connection: psycopg.Connection) -> list[str]:
    return [
        row[0]
        for row in connection.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'wallet' ORDER BY 1"
        )
    ]
