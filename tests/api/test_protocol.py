"""Protocol details (issue 9 item 13): 405 names the allowed methods, scopes are separated by
the space character only, documentation paths that do not exist answer problem+json, and the
OpenAPI document is as strict as the server."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from api.schemas import MAX_AMOUNT, MAX_FEE_SETTING
from tests.api.helpers import V1_RESOURCES, allowed, assert_problem, open_wallet, unique
from tests.support.tokens import JWT_SECRET

OTHER_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
IDEMPOTENCY_KEY_PATTERN = r"^[\x20-\x7e]{1,255}$"  # SPEC 6: 1 to 255 printable ASCII characters


@pytest.fixture(scope="module")
def service(api_url: str, token) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token()}"}, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def wallet_id(service: httpx.Client) -> str:
    return open_wallet(service)["id"]


# --- 405 ----------------------------------------------------------------------------------------

RESOURCES = V1_RESOURCES | {
    "/healthz": {"GET"},
    "/readyz": {"GET"},
    "/metrics": {"GET"},
    "/schema/openapi.json": {"GET"},
}


@pytest.mark.parametrize("resource", sorted(RESOURCES))
def test_every_405_names_the_methods_of_the_resource_in_allow(service, wallet_id, resource):
    path = resource.format(wallet=wallet_id, transaction=wallet_id, hold=wallet_id, operation="deposit")
    for method in OTHER_METHODS:
        if method in RESOURCES[resource]:
            continue
        response = service.request(method, path)

        assert_problem(response, 405, "method_not_allowed")
        assert allowed(response) == RESOURCES[resource] | {"OPTIONS"}, (method, response.headers)


# --- scopes -------------------------------------------------------------------------------------


def client_with_scope(api_url: str, scope: str) -> httpx.Client:
    """A client whose token's scope claim is exactly scope."""
    now = int(time.time())
    claims = {"sub": unique("client"), "scope": scope, "iat": now, "exp": now + 600}
    token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    return httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest.mark.parametrize(
    "scope",
    ["wallets:create\twallets:read", "wallets:create\nwallets:read", "wallets:read\r\nwallets:create"],
    ids=["tab", "newline", "crlf"],
)
def test_scopes_are_not_separated_by_other_whitespace(api_url, scope):
    """RFC 6749 3.3: scope-tokens are separated by the space character (%x20) only."""
    with client_with_scope(api_url, scope) as http:
        response = http.get("/v1/wallets")

    assert_problem(response, 403, "forbidden")


@pytest.mark.parametrize("scope", ["wallets:read", " wallets:read ", "ledger:audit  wallets:read"])
def test_scopes_are_separated_by_spaces(api_url, scope):
    with client_with_scope(api_url, scope) as http:
        response = http.get("/v1/wallets", params={"owner_id": unique()})

    assert response.status_code == 200, response.text


# --- documentation paths ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/schema/nope", "/schema/swagger", "/schema/a/b", "/schema/openapi.yaml"])
def test_a_documentation_path_that_does_not_exist_is_a_404_problem(api_url, path):
    with httpx.Client(base_url=api_url) as anonymous:
        response = anonymous.get(path)

    assert_problem(response, 404, "not_found")


@pytest.mark.parametrize("path", ["/schema", "/schema/", "/schema/openapi.json"])
def test_the_documentation_pages_are_served(api_url, path):
    with httpx.Client(base_url=api_url) as anonymous:
        assert anonymous.get(path).status_code == 200


# --- the OpenAPI document is as strict as the server -------------------------------------------


@pytest.fixture(scope="module")
def document(api_url: str) -> dict[str, Any]:
    with httpx.Client(base_url=api_url) as anonymous:
        response = anonymous.get("/schema/openapi.json")
    assert response.status_code == 200
    return response.json()


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def operations(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


def body(document: dict[str, Any], operation_id: str) -> dict[str, Any]:
    operation = next(op for _, op in operations(document) if op["operationId"] == operation_id)
    return resolve(document, operation["requestBody"]["content"]["application/json"]["schema"])


def parameter(document: dict[str, Any], operation_id: str, name: str) -> dict[str, Any]:
    operation = next(op for _, op in operations(document) if op["operationId"] == operation_id)
    return next(p for p in operation["parameters"] if p["name"] == name)["schema"]


def test_every_request_body_refuses_unknown_properties(document):
    bodies = {
        label: resolve(document, operation["requestBody"]["content"]["application/json"]["schema"])
        for label, operation in operations(document)
        if "requestBody" in operation
    }

    # open, deposit, withdraw, transfer, rule, place and capture a hold
    assert len(bodies) == 7, sorted(bodies)
    assert {label: schema.get("additionalProperties") for label, schema in bodies.items()} == dict.fromkeys(
        bodies, False
    )


def test_every_integer_of_a_request_body_states_its_bounds(document):
    """10.0 is the integer 10 to JSON Schema 2020-12 (OpenAPI 3.1), so that refusal is the
    description's to state; the type and the bounds are the schema's."""
    amount = {"type": "integer", "minimum": 1, "maximum": MAX_AMOUNT}
    fee = {"type": "integer", "minimum": 0, "maximum": MAX_FEE_SETTING}
    for operation_id in ("deposit", "withdraw", "transfer", "placeHold"):
        assert body(document, operation_id)["properties"]["amount"].items() >= amount.items()
    assert body(document, "captureHold")["properties"]["amount"]["anyOf"][0].items() >= amount.items()
    rule = body(document, "setCommissionRule")["properties"]
    assert rule["rate_bps"].items() >= {"type": "integer", "minimum": 0, "maximum": 10000}.items()
    assert rule["fixed"].items() >= fee.items()
    assert rule["min_fee"].items() >= fee.items()
    assert rule["max_fee"]["anyOf"][0].items() >= fee.items()  # an optional field's bounds too
    assert rule["max_fee"]["anyOf"][1] == {"type": "null"}


@pytest.mark.parametrize(
    "operation_id",
    ["openWallet", "deposit", "withdraw", "transfer", "freezeWallet", "placeHold", "captureHold", "voidHold"],
)
def test_the_idempotency_key_header_states_the_servers_pattern(document, service, operation_id):
    key = parameter(document, operation_id, "Idempotency-Key")

    assert (key["pattern"], key["minLength"], key["maxLength"]) == (IDEMPOTENCY_KEY_PATTERN, 1, 255)
    assert re.search(key["pattern"], "a" * 255) and not re.search(key["pattern"], "a\tb")
    refused = service.post("/v1/wallets", json={"owner_id": unique()}, headers={"Idempotency-Key": "a\tb"})
    assert_problem(refused, 400, "invalid_request")


def test_cursors_and_time_bounds_state_their_shape(document):
    assert parameter(document, "listWallets", "cursor")["pattern"] == r"^[A-Za-z0-9_-]{22}$"
    assert parameter(document, "walletHistory", "cursor")["pattern"] == r"^[A-Za-z0-9_-]{11}$"
    assert parameter(document, "listHolds", "cursor")["pattern"] == r"^[A-Za-z0-9_-]{22}$"
    for bound in ("since", "until"):
        assert parameter(document, "walletHistory", bound)["format"] == "date-time"
    assert body(document, "placeHold")["properties"]["expires_at"]["anyOf"][0]["format"] == "date-time"


@pytest.mark.parametrize("cursor", ["AAAAAAAAAA+", "AAAAAAAAAAA=", "AAAAAAAAAAAA", "AAAAAAAAAAA\n"])
def test_a_cursor_outside_its_pattern_is_400(service, wallet_id, cursor):
    """`+` is not URL-safe base64 and a newline no base64 at all, yet Python's decoder reads both."""
    response = service.get(f"/v1/wallets/{wallet_id}/transactions", params={"cursor": cursor})

    assert_problem(response, 400, "invalid_request")
