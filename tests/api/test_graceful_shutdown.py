"""SIGTERM drains: in-flight requests finish, the process exits 0, new connections are refused."""

import signal
import subprocess
import sys
import threading
import time

import httpx
import psycopg

from tests.api.conftest import ROOT, free_port, server_environment, wait_until_healthy


def test_sigterm_finishes_the_in_flight_request_and_exits_0(database_url, token):
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=server_environment(database_url),
    )
    try:
        headers = {"Authorization": f"Bearer {token()}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
            wait_until_healthy(base_url, server)
            wallet = client.post("/v1/wallets", json={"owner_id": "drain"}).json()
            client.post(f"/v1/wallets/{wallet['id']}/deposits", json={"amount": 1000}).raise_for_status()

            # Hold the wallet's row lock so the withdrawal below is in flight when SIGTERM lands.
            with psycopg.connect(database_url) as blocker:
                blocker.execute("SELECT 1 FROM wallet.wallets WHERE id = %s FOR UPDATE", (wallet["id"],))
                responses: list[httpx.Response] = []
                in_flight = threading.Thread(
                    target=lambda: responses.append(
                        client.post(f"/v1/wallets/{wallet['id']}/withdrawals", json={"amount": 300})
                    )
                )
                in_flight.start()
                _wait_until_waiting_on_a_lock(blocker, database_url)
                server.send_signal(signal.SIGTERM)
                time.sleep(0.5)
                assert server.poll() is None, "the server quit with a request in flight"
                blocker.rollback()  # release the lock: the withdrawal can finish
            in_flight.join(timeout=20)

        assert [response.status_code for response in responses] == [201]
        assert server.wait(timeout=20) == 0
        try:
            httpx.get(f"{base_url}/healthz", timeout=2)
            raise AssertionError("the stopped server still answers")
        except httpx.ConnectError:
            pass
        with psycopg.connect(database_url) as check:
            balance = check.execute("SELECT balance FROM wallet.wallets WHERE id = %s", (wallet["id"],))
            assert balance.fetchone()[0] == 700
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def _wait_until_waiting_on_a_lock(blocker: psycopg.Connection, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as observer:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            waiting = observer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> %s",
                (blocker.info.backend_pid,),
            ).fetchone()[0]
            if waiting:
                return
            time.sleep(0.05)
    raise AssertionError("the withdrawal never waited on the wallet's lock")
