"""Input that gave 500s (issue 9 items 8 and 12): date-times at the edges of the calendar,
OPTIONS with a valid token, tokens whose claims are not valid Unicode. Client input never
causes a 5xx (SPEC 7); a refused request is a problem+json and changes nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import psycopg
import pytest

from api.auth import SCOPES
from tests.api.helpers import (
    V1_RESOURCES,
    allowed,
    assert_clean,
    assert_problem,
    assert_unauthenticated,
    funded_wallet,
    open_wallet,
    state,
    unique,
    wallet_count,
)
from tests.support.tokens import JWT_SECRET

# Valid RFC 3339 date-times whose UTC value is in the year 10000 or the year 0.
OUTSIDE_THE_CALENDAR_IN_UTC = [
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59.999999-00:01",
    "0001-01-01T00:00:00+01:00",
    "0001-01-01T00:59:59+14:00",
]


@pytest.fixture(scope="module")
def service(api_url: str, token) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token()}"}, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def wallet(service: httpx.Client) -> dict[str, Any]:
    return funded_wallet(service, 10_000)


@pytest.mark.parametrize("available_at", OUTSIDE_THE_CALENDAR_IN_UTC)
def test_an_available_at_outside_the_years_1_to_9999_in_utc_is_400(service, wallet, available_at):
    before = state(service, wallet["id"])

    response = service.post(
        f"/v1/wallets/{wallet['id']}/deposits", json={"amount": 100, "available_at": available_at}
    )

    assert_problem(response, 400, "invalid_request")
    assert state(service, wallet["id"]) == before


@pytest.mark.parametrize("bound", ["since", "until"])
@pytest.mark.parametrize("value", OUTSIDE_THE_CALENDAR_IN_UTC)
def test_a_history_bound_outside_the_years_1_to_9999_in_utc_is_400(service, wallet, bound, value):
    response = service.get(f"/v1/wallets/{wallet['id']}/transactions", params={bound: value})

    assert_problem(response, 400, "invalid_request")


@pytest.mark.parametrize("bound", ["since", "until"])
@pytest.mark.parametrize("value", ["0.5", "1700000000", "2026-01-01", "today"])
def test_a_history_bound_that_is_not_an_rfc_3339_date_time_is_400(service, wallet, bound, value):
    """Litestar took `0.5` for a Unix time; the document says date-time, and so does the server."""
    response = service.get(f"/v1/wallets/{wallet['id']}/transactions", params={bound: value})

    assert_problem(response, 400, "invalid_request")


def test_history_bounds_at_the_edges_of_the_calendar_are_accepted(service, wallet):
    response = service.get(
        f"/v1/wallets/{wallet['id']}/transactions",
        params={"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T23:59:59.999999Z"},
    )

    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == 1, "the funding deposit lies between them"


def test_the_first_instant_of_the_calendar_is_stored_as_itself_not_minus_infinity(
    service, shared_database_url
):
    """asyncpg sends datetime.min as -infinity; `0001-01-01T00:00:00Z` is a valid past instant,
    so an instant deposit (SPEC 5) whose available_at is that instant."""
    wallet = open_wallet(service)

    response = service.post(
        f"/v1/wallets/{wallet['id']}/deposits", json={"amount": 100, "available_at": "0001-01-01T00:00:00Z"}
    )

    assert response.status_code == 201, response.text
    transaction = response.json()
    assert (transaction["status"], transaction["available_at"]) == ("posted", "0001-01-01T00:00:00Z")
    read = service.get(f"/v1/transactions/{transaction['id']}").json()
    assert read["available_at"] == "0001-01-01T00:00:00Z"
    assert state(service, wallet["id"])[:3] == (100 - transaction["fee"],) * 2 + (0,)
    with psycopg.connect(shared_database_url) as connection:
        stored = connection.execute(
            "SELECT isfinite(available_at), available_at = '0001-01-01 00:00:00+00'"
            " FROM wallet.transactions WHERE id = %s",
            (transaction["id"],),
        ).fetchone()
    assert stored == (True, True)


# --- OPTIONS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_token", [True, False], ids=["valid_token", "no_token"])
@pytest.mark.parametrize("resource", sorted(V1_RESOURCES))
def test_options_names_the_methods_of_every_v1_resource(service, wallet, api_url, resource, with_token):
    """OPTIONS with a valid token gave 500 (the auth guard looked for the scope of Litestar's
    own OPTIONS handler, which has none). It reads nothing, so it needs no token (a CORS
    preflight carries none)."""
    path = resource.format(
        wallet=wallet["id"], transaction=wallet["id"], hold=wallet["id"], operation="deposit"
    )
    headers = service.headers if with_token else {}

    with httpx.Client(base_url=api_url, headers=headers, timeout=30) as http:
        response = http.options(path)

    assert_clean(response)
    assert response.status_code == 204, response.text
    assert allowed(response) == V1_RESOURCES[resource] | {"OPTIONS"}
    assert response.content == b""


# --- tokens whose claims are not valid Unicode ------------------------------------------------------


def token_with(**overrides: Any) -> str:
    """A correctly signed HS256 token; PyJWT writes a lone surrogate as the JSON escape `\\ud800`."""
    now = int(time.time())
    claims = {"sub": unique("client"), "scope": " ".join(SCOPES), "iat": now, "exp": now + 600}
    return jwt.encode(claims | overrides, JWT_SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    "claim",
    [
        {"sub": "\ud800"},
        {"sub": "merchant-\udfff"},
        {"sub": "nul-\x00"},
        {"owner_id": "\ud800"},
        {"owner_id": "shop-\udc00-x"},
        {"owner_id": "nul-\x00"},
    ],
    ids=["sub_lone_high", "sub_lone_low", "sub_nul", "owner_lone_high", "owner_lone_low", "owner_nul"],
)
@pytest.mark.parametrize("route", ["list_wallets", "open_wallet"])
def test_a_signed_token_whose_claims_are_not_valid_unicode_is_401(service, api_url, claim, route):
    owner_id = unique("opened")
    bad = {"Authorization": f"Bearer {token_with(**claim)}"}

    with httpx.Client(base_url=api_url, headers=bad, timeout=30) as http:
        if route == "list_wallets":
            response = http.get("/v1/wallets")
        else:
            response = http.post("/v1/wallets", json={"owner_id": owner_id})

    assert_unauthenticated(response)
    assert wallet_count(service, owner_id) == 0
