"""What the HTTP tests share: the problem+json shape, a wallet's observable state, builders."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import httpx

PROBLEM_FIELDS = {"type", "title", "status", "detail", "code"}
# Nothing internal may reach a client (SPEC 7): stack traces, driver names, SQL, schema names.
LEAKS = ("Traceback", "asyncpg", "psycopg", "SELECT", "wallet.")

WALLET_FIELDS = {
    "id",
    "owner_id",
    "currency",
    "status",
    "balance",
    "held",
    "available",
    "pending",
    "created_at",
    "updated_at",
    "metadata",
}
TRANSACTION_FIELDS = {
    "id",
    "kind",
    "status",
    "wallet_id",
    "from_wallet_id",
    "to_wallet_id",
    "amount",
    "fee",
    "reference",
    "metadata",
    "available_at",
    "created_at",
    "posted_at",
    "failure_reason",
    "hold_id",
}
HISTORY_ITEM_FIELDS = {
    "transaction_id",
    "kind",
    "status",
    "amount",
    "fee",
    "balance_after",
    "created_at",
    "reference",
    "hold_id",
}
PAGE_FIELDS = {"items", "next_cursor"}
# Every /v1 resource (SPEC 4, and issue 12's holds) and the methods it has; {wallet},
# {transaction}, {hold} and {operation} stand for its path parameters.
V1_RESOURCES = {
    "/v1/wallets": {"GET", "POST"},
    "/v1/wallets/{wallet}": {"GET"},
    "/v1/wallets/{wallet}/freeze": {"POST"},
    "/v1/wallets/{wallet}/unfreeze": {"POST"},
    "/v1/wallets/{wallet}/close": {"POST"},
    "/v1/wallets/{wallet}/deposits": {"POST"},
    "/v1/wallets/{wallet}/withdrawals": {"POST"},
    "/v1/wallets/{wallet}/transactions": {"GET"},
    "/v1/wallets/{wallet}/holds": {"GET", "POST"},
    "/v1/holds/{hold}": {"GET"},
    "/v1/holds/{hold}/capture": {"POST"},
    "/v1/holds/{hold}/void": {"POST"},
    "/v1/transfers": {"POST"},
    "/v1/transactions/{transaction}": {"GET"},
    "/v1/transactions/{transaction}/cancel": {"POST"},
    "/v1/commission-rules": {"GET"},
    "/v1/commission-rules/{operation}": {"PUT"},
    "/v1/ledger/verify": {"GET"},
}


def unique(prefix: str = "owner") -> str:
    """An owner id no other test uses: tests share the session's server and database."""
    return f"{prefix}-{uuid.uuid4().hex}"


def assert_clean(response: httpx.Response) -> None:
    """Client input never causes a 5xx, and no response says anything about the inside."""
    assert response.status_code < 500, (response.status_code, response.text)
    assert_no_leak(response)


def assert_no_leak(response: httpx.Response) -> None:
    for leak in LEAKS:
        assert leak not in response.text, (leak, response.text)


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An application/problem+json error with exactly the SPEC 7 fields, for client input (never
    a 5xx); returns the body."""
    body = assert_problem_shape(response, status, code)
    assert_clean(response)
    return body


def assert_problem_shape(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An application/problem+json error with exactly the SPEC 7 fields, saying nothing about
    the inside; returns the body."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].split(";")[0].strip() == "application/problem+json"
    body = response.json()
    assert set(body) == PROBLEM_FIELDS, body
    assert body["status"] == status
    assert body["code"] == code, body
    assert all(isinstance(body[field], str) and body[field] for field in ("type", "title", "detail", "code"))
    assert_no_leak(response)
    return body


def allowed(response: httpx.Response) -> set[str]:
    """The methods an Allow header names."""
    return {method.strip() for method in response.headers.get("allow", "").split(",") if method.strip()}


def assert_unauthenticated(response: httpx.Response) -> None:
    assert_problem(response, 401, "unauthenticated")
    assert response.headers.get("www-authenticate", "").split(" ")[0] == "Bearer"


def open_wallet(http: httpx.Client, owner_id: str | None = None, **fields: Any) -> dict[str, Any]:
    response = http.post("/v1/wallets", json={"owner_id": owner_id or unique(), **fields})
    assert response.status_code == 201, response.text
    return response.json()


def deposit(http: httpx.Client, wallet_id: str, amount: int, **fields: Any) -> dict[str, Any]:
    response = http.post(f"/v1/wallets/{wallet_id}/deposits", json={"amount": amount, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def funded_wallet(http: httpx.Client, amount: int = 10_000, owner_id: str | None = None) -> dict[str, Any]:
    wallet = open_wallet(http, owner_id)
    deposit(http, wallet["id"], amount)
    return wallet


def history(http: httpx.Client, wallet_id: str, **params: Any) -> dict[str, Any]:
    response = http.get(f"/v1/wallets/{wallet_id}/transactions", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def state(http: httpx.Client, wallet_id: str) -> tuple[Any, ...]:
    """What a refused request must leave alone: balances, status and the number of history items."""
    response = http.get(f"/v1/wallets/{wallet_id}")
    assert response.status_code == 200, response.text
    wallet = response.json()
    items = history(http, wallet_id, limit=100)["items"]
    return (
        wallet["balance"],
        wallet["available"],
        wallet["pending"],
        wallet["status"],
        len(items),
        wallet["held"],
    )


def wallet_count(http: httpx.Client, owner_id: str) -> int:
    response = http.get("/v1/wallets", params={"owner_id": owner_id, "limit": 100})
    assert response.status_code == 200, response.text
    return len(response.json()["items"])


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned_token(claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """A JWT with an empty signature, built by hand (libraries refuse to make `alg: none`)."""
    header = header or {"alg": "none", "typ": "JWT"}
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}."
