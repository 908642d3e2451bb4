"""A database that cannot be reached is 503 unavailable with Retry-After, never a 500."""

import httpx

from tests.support.processes import free_port, running_server


def test_an_unreachable_database_is_503_with_retry_after(token):
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/wallet"  # nothing listens there
    with running_server(
        nowhere, probe="/healthz", WALLET_POOL_MIN_SIZE="0", WALLET_POOL_ACQUIRE_TIMEOUT_SECONDS="2"
    ) as base:
        headers = {"Authorization": f"Bearer {token()}"}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            assert client.get("/healthz").status_code == 200  # the process itself is fine
            for response in (
                client.get("/readyz"),
                client.post("/v1/wallets", json={"owner_id": "nobody"}),
                client.get("/v1/wallets/01a21651-7583-747e-9367-839245487e3b"),
            ):
                assert response.status_code == 503, response.text
                assert response.headers["Retry-After"] == "1"
                assert response.headers["content-type"] == "application/problem+json"
                assert response.json()["code"] == "unavailable"
