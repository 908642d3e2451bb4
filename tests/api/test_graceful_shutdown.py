"""SIGTERM drains: in-flight requests finish, the process exits 0, new connections are refused."""

import signal
import threading
import time

import httpx
import psycopg

from tests.support.processes import api_server


def test_sigterm_finishes_the_in_flight_request_and_exits_0(database_url, token, tmp_path):
    with api_server(database_url, log_path=tmp_path / "serve.log") as server:
        base_url = server.base_url
        headers = {"Authorization": f"Bearer {token()}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
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
                server.send(signal.SIGTERM)
                # Draining: the listening socket is closed, the process still runs.
                server.wait_until(
                    lambda: not server.accepts_connections(), timeout=10, what="new connections refused"
                )
                assert server.alive, "the server quit with a request in flight\n" + server.log_tail()
                blocker.rollback()  # release the lock: the withdrawal can finish
            in_flight.join(timeout=20)

        assert [response.status_code for response in responses] == [201]
        assert server.wait(timeout=20) == 0, server.log_tail()
        try:
            httpx.get(f"{base_url}/healthz", timeout=2)
            raise AssertionError("the stopped server still answers")
        except httpx.ConnectError:
            pass
        with psycopg.connect(database_url) as check:
            balance = check.execute("SELECT balance FROM wallet.wallets WHERE id = %s", (wallet["id"],))
            assert balance.fetchone()[0] == 700


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
