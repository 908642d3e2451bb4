"""GET /v1/ledger/verify (issue 9 item 5): it runs wallet.verify_ledger() as wallet_auditor,
the role that may (wallet_app may not), read-only and within WALLET_VERIFY_TIMEOUT_SECONDS; a
check cut short by that limit is 503 verify_timeout with Retry-After, never a 500."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest

from tests.api.helpers import assert_problem_shape, funded_wallet
from tests.support.processes import running_server


@pytest.fixture
def login_without_privileges(database_url: str, db: psycopg.Connection) -> Iterator[str]:
    """The URL of a login role that is a member of wallet_app and wallet_auditor but inherits
    neither (NOINHERIT): what it may do, it may do only after SET ROLE."""
    name, password = f"wallet_test_login_{uuid.uuid4().hex[:12]}", secrets.token_hex(16)
    db.execute(f"CREATE ROLE {name} LOGIN NOINHERIT PASSWORD '{password}'")
    db.execute(f"GRANT wallet_app, wallet_auditor TO {name}")
    parts = urlsplit(database_url)
    host = parts.netloc.rpartition("@")[2]
    yield urlunsplit(parts._replace(netloc=f"{name}:{password}@{host}"))
    db.execute(f"DROP ROLE {name}")


def test_ledger_verify_runs_as_the_auditor_role(login_without_privileges, token, db):
    (wallet_id,) = db.execute(
        "SELECT id FROM wallet.open_wallet('verify-test', NULL, NULL, 'owner', 'IRR', '{}')"
    ).fetchone()
    with (
        running_server(login_without_privileges) as base_url,
        httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {token('ledger:audit')}"}, timeout=30
        ) as http,
    ):
        healthy = http.get("/v1/ledger/verify")
        db.execute("UPDATE wallet.wallets SET pending = pending + 1 WHERE id = %s", (wallet_id,))
        corrupted = http.get("/v1/ledger/verify")

    assert healthy.status_code == 200, healthy.text
    assert healthy.json() == {"ok": True, "violations": []}
    assert corrupted.status_code == 200, corrupted.text
    assert corrupted.json()["ok"] is False
    assert str(wallet_id) in str(corrupted.json()["violations"])


def test_ledger_verify_past_its_time_limit_is_503_verify_timeout(database_url, token, db):
    with (
        running_server(database_url, WALLET_VERIFY_TIMEOUT_SECONDS="1") as base_url,
        httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token()}"}, timeout=10) as http,
    ):
        funded_wallet(http, 1000)
        # A check that cannot finish in a second: the entries are locked until this transaction ends.
        with psycopg.connect(database_url) as blocker:
            blocker.execute("LOCK TABLE wallet.entries IN ACCESS EXCLUSIVE MODE")
            stopped = http.get("/v1/ledger/verify")
        after = http.get("/v1/ledger/verify")

    assert_problem_shape(stopped, 503, "verify_timeout")
    assert stopped.headers["retry-after"] == "1"
    assert after.status_code == 200, after.text
    assert after.json() == {"ok": True, "violations": []}, "the connection went back to the pool unharmed"
