"""The API through PgBouncer in transaction-pooling mode (WALLET_STATEMENT_CACHE_SIZE=0).

PgBouncer is Debian's package (`make test` installs it when it can); without it the test
is skipped and says why.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest

from tests.support.processes import free_port, running_server

PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
)
# PgBouncer refuses to run as root; it drops to this user (the one pgserver runs PostgreSQL as).
UNPRIVILEGED_USER = "pgserver"

pytestmark = pytest.mark.skipif(
    PGBOUNCER is None, reason="pgbouncer is not installed (Debian: apt-get install pgbouncer)"
)


@pytest.fixture
def pgbouncer_folder() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are private to root, and pgbouncer runs as another user.
    with tempfile.TemporaryDirectory(prefix="wallet-pgbouncer-") as folder:
        os.chmod(folder, 0o777)
        yield Path(folder)


@pytest.fixture
def pgbouncer_url(database_url: str, pgbouncer_folder: Path) -> Iterator[str]:
    """A transaction-pooling PgBouncer in front of this test's database; yields its URL."""
    tmp_path = pgbouncer_folder
    parts = urlsplit(database_url)
    database = parts.path.lstrip("/")
    socket_dir = parse_qs(parts.query).get("host", [None])[0]
    upstream = f"host={socket_dir or parts.hostname} port={parts.port or 5432} dbname={database}"
    port = free_port()
    (tmp_path / "users.txt").write_text(f'"{parts.username or "postgres"}" ""\n')
    (tmp_path / "pgbouncer.ini").write_text(
        f"""[databases]
{database} = {upstream} user={parts.username or "postgres"}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {tmp_path / "users.txt"}
pool_mode = transaction
default_pool_size = 5
max_client_conn = 200
logfile = {tmp_path / "pgbouncer.log"}
pidfile = {tmp_path / "pgbouncer.pid"}
"""
    )
    command = [PGBOUNCER, str(tmp_path / "pgbouncer.ini")]
    if os.geteuid() == 0:
        if not _user_exists(UNPRIVILEGED_USER):
            pytest.skip(f"running as root and no user {UNPRIVILEGED_USER!r} for pgbouncer to drop to")
        command[1:1] = ["-u", UNPRIVILEGED_USER]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"postgresql://{parts.username or 'postgres'}@127.0.0.1:{port}/{database}"
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                output = process.stdout.read() if process.stdout else ""
                raise AssertionError(f"pgbouncer exited: {output} {_tail(tmp_path / 'pgbouncer.log')}")
            try:
                with psycopg.connect(url, connect_timeout=2) as probe:
                    probe.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()


def test_money_moves_correctly_through_a_transaction_pooler(pgbouncer_url, db, token):
    with running_server(pgbouncer_url, WALLET_STATEMENT_CACHE_SIZE="0", WALLET_POOL_MAX_SIZE="20") as base:
        headers = {"Authorization": f"Bearer {token()}"}
        results = asyncio.run(_concurrent_movements(base, headers))

    statuses = [status for status, _ in results]
    assert statuses.count(201) == len(statuses), statuses
    balances = dict(db.execute("SELECT owner_id, balance FROM wallet.wallets").fetchall())
    # Each of 40 rounds: deposit 100 into A, transfer 30 A -> B, replay of that transfer.
    assert balances == {"bouncer-a": 40 * 70, "bouncer-b": 40 * 30}
    assert db.execute("SELECT count(*) FROM wallet.transactions").fetchone()[0] == 80
    assert db.execute("SELECT * FROM wallet.verify_ledger()").fetchall() == []


async def _concurrent_movements(base: str, headers: dict[str, str]) -> list[tuple[int, dict]]:
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        a = (await client.post("/v1/wallets", json={"owner_id": "bouncer-a"})).json()["id"]
        b = (await client.post("/v1/wallets", json={"owner_id": "bouncer-b"})).json()["id"]

        async def round_trip() -> list[tuple[int, dict]]:
            key = uuid.uuid4().hex
            deposit = await client.post(f"/v1/wallets/{a}/deposits", json={"amount": 100})
            body = {"from_wallet_id": a, "to_wallet_id": b, "amount": 30}
            transfer = await _transfer_when_funded(client, body, key)
            replay = await client.post("/v1/transfers", json=body, headers={"Idempotency-Key": key})
            assert replay.headers.get("Idempotent-Replayed") == "true"
            assert replay.json() == transfer.json()
            return [(response.status_code, response.json()) for response in (deposit, transfer, replay)]

        rounds = await asyncio.gather(*(round_trip() for _ in range(40)))
    return [result for one_round in rounds for result in one_round]


async def _transfer_when_funded(client: httpx.AsyncClient, body: dict, key: str) -> httpx.Response:
    # A's deposits and transfers race; a transfer that finds A short is simply retried.
    for _ in range(50):
        response = await client.post("/v1/transfers", json=body, headers={"Idempotency-Key": key})
        if response.status_code != 422:
            return response
        await asyncio.sleep(0.05)
    return response


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _tail(path: Path) -> str:
    return path.read_text()[-2000:] if path.exists() else "(no log)"
