"""One JSON line per request, with its request id, route, status, latency and caller; never
the token or the body."""

import json

import httpx

from tests.support.processes import api_server


def test_each_request_logs_one_json_line_without_token_or_body(database_url, token, tmp_path):
    secret_token = token(sub="log-checker")
    server = api_server(database_url, WALLET_LOG_LEVEL="INFO", log_path=tmp_path / "serve.log")
    with server:
        base_url = server.base_url
        headers = {"Authorization": f"Bearer {secret_token}", "X-Request-ID": "trace-me-123"}
        response = httpx.post(
            f"{base_url}/v1/wallets",
            json={"owner_id": "owner-with-a-secret-body-marker"},
            headers=headers,
            timeout=10,
        )
        assert response.status_code == 201
        assert response.headers["X-Request-ID"] == "trace-me-123"
        generated = httpx.get(f"{base_url}/healthz", timeout=10).headers["X-Request-ID"]
        assert len(generated) == 32

    text = server.log_text()
    # Every line is JSON, but the helper's own "=== ... started" header.
    lines = [json.loads(line) for line in text.splitlines() if line.strip() and not line.startswith("===")]
    [access] = [line for line in lines if line.get("request_id") == "trace-me-123"]
    assert access["logger"] == "wallet.access"
    assert (access["method"], access["route"], access["status"], access["sub"]) == (
        "POST",
        "/v1/wallets",
        201,
        "log-checker",
    )
    assert access["latency_ms"] >= 0
    assert secret_token not in text
    assert secret_token.split(".")[1] not in text  # not even the claims
    assert "owner-with-a-secret-body-marker" not in text
