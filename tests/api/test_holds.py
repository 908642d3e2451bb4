"""Holds over HTTP (issue 12): place (authorize), capture in parts or in full, to the outside world
or to another wallet, void; what the wallet shows (`held`, `available = balance - held`), the
history (captures only, with `hold_id`), every error code as problem+json, idempotent replays,
tenancy, listing with its status filter and cursor, and strict bodies. Expiry needs a worker: the
worker's tests cover it (tests/jobs/)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import psycopg
import pytest

from tests.api.helpers import (
    PAGE_FIELDS,
    TRANSACTION_FIELDS,
    WALLET_FIELDS,
    assert_problem,
    history,
    open_wallet,
    unique,
)

HOLD_FIELDS = {
    "id",
    "wallet_id",
    "status",
    "amount",
    "captured_amount",
    "remaining",
    "reference",
    "metadata",
    "expires_at",
    "created_at",
    "closed_at",
}
NO_FEE = {"rate_bps": 0, "fixed": 0, "min_fee": 0, "max_fee": 0}
TEHRAN = timezone(timedelta(hours=3, minutes=30))
DEFAULT_EXPIRY = timedelta(days=7)
MAX_BALANCE = 10**18
MAX_AMOUNT = 10**15


# --- helpers ------------------------------------------------------------------------------------------


def set_rule(http: httpx.Client, operation: str, owner_id: str, **rule: int | None) -> None:
    body = NO_FEE | rule | {"owner_id": owner_id}
    response = http.put(f"/v1/commission-rules/{operation}", json=body)
    assert response.status_code == 200, response.text


def fee_free_owner(http: httpx.Client) -> str:
    """A new owner whose deposits, withdrawals and transfers cost nothing (per-owner rules)."""
    owner_id = unique("holder")
    for operation in ("deposit", "withdrawal", "transfer"):
        set_rule(http, operation, owner_id)
    return owner_id


def funded(http: httpx.Client, amount: int, owner_id: str | None = None, currency: str = "IRR") -> str:
    """A wallet of owner_id (a new fee-free owner by default) holding exactly amount."""
    owner_id = owner_id or fee_free_owner(http)
    wallet_id = open_wallet(http, owner_id, currency=currency)["id"]
    if amount:
        response = http.post(f"/v1/wallets/{wallet_id}/deposits", json={"amount": amount})
        assert response.status_code == 201, response.text
        assert response.json()["fee"] == 0, response.text
    return wallet_id


def wallet(http: httpx.Client, wallet_id: str) -> dict[str, Any]:
    response = http.get(f"/v1/wallets/{wallet_id}")
    assert response.status_code == 200, response.text
    return response.json()


def money(http: httpx.Client, wallet_id: str) -> tuple[int, int, int]:
    """(balance, held, available), checking available = balance - held."""
    body = wallet(http, wallet_id)
    assert body["available"] == body["balance"] - body["held"], body
    return body["balance"], body["held"], body["available"]


def place(http: httpx.Client, wallet_id: str, amount: int, **fields: Any) -> dict[str, Any]:
    response = http.post(f"/v1/wallets/{wallet_id}/holds", json={"amount": amount, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def capture(http: httpx.Client, hold_id: str, **body: Any) -> dict[str, Any]:
    response = http.post(f"/v1/holds/{hold_id}/capture", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def hold(http: httpx.Client, hold_id: str) -> dict[str, Any]:
    response = http.get(f"/v1/holds/{hold_id}")
    assert response.status_code == 200, response.text
    return response.json()


def everything(http: httpx.Client, wallet_id: str) -> tuple[Any, ...]:
    """What a refused request must leave alone: the wallet whole and all its holds and history."""
    holds = http.get(f"/v1/wallets/{wallet_id}/holds", params={"limit": 500}).json()["items"]
    return wallet(http, wallet_id), holds, history(http, wallet_id, limit=500)["items"]


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is not None, text
    return moment


def assert_hold(body: dict[str, Any], *, wallet_id: str, status: str, amount: int, captured: int) -> None:
    assert set(body) == HOLD_FIELDS, body
    uuid.UUID(body["id"])
    assert body["wallet_id"] == wallet_id
    assert (body["status"], body["amount"], body["captured_amount"]) == (status, amount, captured), body
    assert body["remaining"] == (amount - captured if status == "active" else 0), body
    assert (body["closed_at"] is None) == (status == "active"), body
    assert parse_time(body["expires_at"]) > parse_time(body["created_at"])


def assert_capture(
    transaction: dict[str, Any], *, hold_id: str, wallet_id: str, amount: int, to_wallet_id: str | None = None
) -> None:
    assert set(transaction) == TRANSACTION_FIELDS | {"currency", "hold_id"}, transaction
    assert transaction["hold_id"] == hold_id
    assert transaction["status"] == "posted"
    assert transaction["amount"] == amount
    if to_wallet_id is None:
        assert transaction["kind"] == "withdrawal", transaction
        assert (transaction["wallet_id"], transaction["to_wallet_id"]) == (wallet_id, None)
    else:
        assert transaction["kind"] == "transfer", transaction
        assert transaction["wallet_id"] is None
        assert (transaction["from_wallet_id"], transaction["to_wallet_id"]) == (wallet_id, to_wallet_id)


def owner_client(api_url: str, token, owner_id: str) -> httpx.Client:
    return httpx.Client(
        base_url=api_url,
        headers={"Authorization": f"Bearer {token(sub=unique('merchant'), owner_id=owner_id)}"},
        timeout=30,
    )


# --- place, read, the wallet's held and available -------------------------------------------------------


def test_placing_a_hold_answers_201_with_location_and_reserves_the_amount(client):
    wallet_id = funded(client, 10_000)

    response = client.post(
        f"/v1/wallets/{wallet_id}/holds",
        json={"amount": 3_000, "reference": "order-1", "metadata": {"basket": 7}},
    )

    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/json")
    placed = response.json()
    assert_hold(placed, wallet_id=wallet_id, status="active", amount=3_000, captured=0)
    assert (placed["reference"], placed["metadata"]) == ("order-1", {"basket": 7})
    assert response.headers["location"] == f"/v1/holds/{placed['id']}"
    assert "idempotent-replayed" not in response.headers
    body = wallet(client, wallet_id)
    assert set(body) == WALLET_FIELDS
    assert (body["balance"], body["held"], body["available"]) == (10_000, 3_000, 7_000)


def test_a_hold_without_expires_at_expires_seven_days_after_it_was_placed(client):
    placed = place(client, funded(client, 100), 100)

    created, expires = parse_time(placed["created_at"]), parse_time(placed["expires_at"])
    assert abs(expires - created - DEFAULT_EXPIRY) < timedelta(seconds=5), placed


def test_get_hold_returns_what_placing_returned(client):
    response = client.post(f"/v1/wallets/{funded(client, 500)}/holds", json={"amount": 200})

    read = client.get(response.headers["location"])

    assert read.status_code == 200
    assert read.json() == response.json()


def test_a_new_wallet_shows_nothing_held(client):
    body = wallet(client, open_wallet(client)["id"])

    assert (body["balance"], body["held"], body["available"]) == (0, 0, 0)


def test_holds_add_up_in_held_and_nothing_is_posted(client):
    wallet_id = funded(client, 10_000)

    place(client, wallet_id, 1_000)
    place(client, wallet_id, 2_500)

    assert money(client, wallet_id) == (10_000, 3_500, 6_500)
    items = history(client, wallet_id)["items"]
    assert [item["kind"] for item in items] == ["deposit"], "placing a hold posts nothing"


def test_holding_all_the_available_money_stops_withdrawals_and_transfers(client):
    wallet_id, other = funded(client, 1_000), open_wallet(client)["id"]
    place(client, wallet_id, 1_000)

    withdrawal = client.post(f"/v1/wallets/{wallet_id}/withdrawals", json={"amount": 1})
    transfer = client.post(
        "/v1/transfers", json={"from_wallet_id": wallet_id, "to_wallet_id": other, "amount": 1}
    )
    second_hold = client.post(f"/v1/wallets/{wallet_id}/holds", json={"amount": 1})

    for response in (withdrawal, transfer, second_hold):
        assert_problem(response, 422, "insufficient_funds")
    assert money(client, wallet_id) == (1_000, 1_000, 0)


# --- capture ----------------------------------------------------------------------------------------


def test_partial_captures_repeat_until_nothing_remains(client):
    wallet_id = funded(client, 10_000)
    held = place(client, wallet_id, 6_000)

    first = capture(client, held["id"], amount=1_000)
    assert_capture(first, hold_id=held["id"], wallet_id=wallet_id, amount=1_000)
    assert money(client, wallet_id) == (9_000, 5_000, 4_000)
    assert_hold(hold(client, held["id"]), wallet_id=wallet_id, status="active", amount=6_000, captured=1_000)

    second = capture(client, held["id"], amount=2_000)
    assert_capture(second, hold_id=held["id"], wallet_id=wallet_id, amount=2_000)
    assert money(client, wallet_id) == (7_000, 3_000, 4_000)

    rest = capture(client, held["id"])  # no amount: all that remains, and the hold is done
    assert_capture(rest, hold_id=held["id"], wallet_id=wallet_id, amount=3_000)
    assert money(client, wallet_id) == (4_000, 0, 4_000)
    done = hold(client, held["id"])
    assert_hold(done, wallet_id=wallet_id, status="captured", amount=6_000, captured=6_000)

    again = client.post(f"/v1/holds/{held['id']}/capture", json={"amount": 1})
    assert_problem(again, 409, "hold_not_active")
    assert len({first["id"], second["id"], rest["id"]}) == 3


def test_capturing_exactly_the_remaining_amount_closes_the_hold(client):
    wallet_id = funded(client, 1_000)
    held = place(client, wallet_id, 400)

    capture(client, held["id"], amount=400)

    assert_hold(hold(client, held["id"]), wallet_id=wallet_id, status="captured", amount=400, captured=400)
    assert money(client, wallet_id) == (600, 0, 600)


def test_a_final_capture_takes_its_amount_and_releases_the_rest(client):
    wallet_id = funded(client, 10_000)
    held = place(client, wallet_id, 5_000)

    transaction = capture(client, held["id"], amount=1_500, final=True)

    assert_capture(transaction, hold_id=held["id"], wallet_id=wallet_id, amount=1_500)
    closed = hold(client, held["id"])
    assert_hold(closed, wallet_id=wallet_id, status="captured", amount=5_000, captured=1_500)
    assert money(client, wallet_id) == (8_500, 0, 8_500)
    assert_problem(client.post(f"/v1/holds/{held['id']}/void"), 409, "hold_not_active")


def test_capture_to_another_wallet_is_a_transfer_with_the_hold_id(client):
    owner_id = fee_free_owner(client)
    payer, payee = funded(client, 10_000, owner_id), funded(client, 250)
    held = place(client, payer, 4_000, reference="order-9")

    response = client.post(
        f"/v1/holds/{held['id']}/capture", json={"amount": 3_000, "to_wallet_id": payee, "final": True}
    )

    assert response.status_code == 201, response.text
    transaction = response.json()
    assert_capture(transaction, hold_id=held["id"], wallet_id=payer, amount=3_000, to_wallet_id=payee)
    assert response.headers["location"] == f"/v1/transactions/{transaction['id']}"
    assert client.get(response.headers["location"]).json() == transaction
    assert money(client, payer) == (7_000, 0, 7_000)
    assert money(client, payee) == (3_250, 0, 3_250)
    payee_items = history(client, payee)["items"]
    assert (payee_items[0]["transaction_id"], payee_items[0]["amount"]) == (transaction["id"], 3_000)
    assert [item["hold_id"] for item in payee_items] == [held["id"], None]
    payer_items = history(client, payer)["items"]
    assert [(item["kind"], item["amount"], item["hold_id"]) for item in payer_items] == [
        ("transfer", -3_000, held["id"]),
        ("deposit", 10_000, None),
    ]


def test_the_capture_fee_is_charged_from_available_not_from_the_hold(client):
    owner_id = fee_free_owner(client)
    set_rule(client, "withdrawal", owner_id, fixed=100, max_fee=None)
    set_rule(client, "transfer", owner_id, fixed=40, max_fee=None)
    wallet_id, payee = funded(client, 10_000, owner_id), open_wallet(client)["id"]
    held = place(client, wallet_id, 5_000)

    outside = capture(client, held["id"], amount=2_000)
    inside = capture(client, held["id"], amount=1_000, to_wallet_id=payee)

    assert (outside["fee"], inside["fee"]) == (100, 40)
    # The hold gave 3,000; the fees came out of what was not held.
    assert_hold(hold(client, held["id"]), wallet_id=wallet_id, status="active", amount=5_000, captured=3_000)
    assert money(client, wallet_id) == (10_000 - 3_000 - 140, 2_000, 10_000 - 3_000 - 140 - 2_000)
    assert money(client, payee) == (1_000, 0, 1_000)


def test_a_capture_whose_fee_available_cannot_pay_is_422_insufficient_funds(client):
    owner_id = fee_free_owner(client)
    set_rule(client, "withdrawal", owner_id, fixed=100, max_fee=None)
    wallet_id = funded(client, 1_050, owner_id)
    held = place(client, wallet_id, 1_000)  # 50 left available: less than the fee
    before = everything(client, wallet_id)

    response = client.post(f"/v1/holds/{held['id']}/capture", json={"amount": 500})

    assert_problem(response, 422, "insufficient_funds")
    assert everything(client, wallet_id) == before


def test_an_empty_body_captures_everything_that_remains(client):
    wallet_id = funded(client, 900)
    held = place(client, wallet_id, 700)

    response = client.post(
        f"/v1/holds/{held['id']}/capture", content=b"{}", headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 201, response.text
    assert response.json()["amount"] == 700
    assert money(client, wallet_id) == (200, 0, 200)


def test_a_capture_without_a_body_is_400_and_captures_nothing(client):
    wallet_id = funded(client, 900)
    held = place(client, wallet_id, 700)
    before = everything(client, wallet_id)

    response = client.post(f"/v1/holds/{held['id']}/capture")

    assert_problem(response, 400, "invalid_request")
    assert everything(client, wallet_id) == before


# --- void ---------------------------------------------------------------------------------------------


def test_void_answers_200_and_releases_the_hold(client):
    wallet_id = funded(client, 5_000)
    held = place(client, wallet_id, 2_000)

    response = client.post(f"/v1/holds/{held['id']}/void")

    assert response.status_code == 200, response.text
    voided = response.json()
    assert_hold(voided, wallet_id=wallet_id, status="voided", amount=2_000, captured=0)
    assert parse_time(voided["closed_at"]) >= parse_time(voided["created_at"])
    assert hold(client, held["id"]) == voided
    assert money(client, wallet_id) == (5_000, 0, 5_000)
    assert [item["kind"] for item in history(client, wallet_id)["items"]] == ["deposit"]


def test_voiding_after_a_partial_capture_keeps_the_capture(client):
    wallet_id = funded(client, 5_000)
    held = place(client, wallet_id, 2_000)
    capture(client, held["id"], amount=500)

    voided = client.post(f"/v1/holds/{held['id']}/void").json()

    assert_hold(voided, wallet_id=wallet_id, status="voided", amount=2_000, captured=500)
    assert money(client, wallet_id) == (4_500, 0, 4_500)


def test_a_voided_hold_can_be_neither_voided_nor_captured_again(client):
    wallet_id = funded(client, 5_000)
    held = place(client, wallet_id, 2_000)
    assert client.post(f"/v1/holds/{held['id']}/void").status_code == 200
    before = everything(client, wallet_id)

    assert_problem(client.post(f"/v1/holds/{held['id']}/void"), 409, "hold_not_active")
    assert_problem(client.post(f"/v1/holds/{held['id']}/capture", json={}), 409, "hold_not_active")
    assert everything(client, wallet_id) == before


# --- refusals -----------------------------------------------------------------------------------------


def test_a_hold_above_available_is_422_insufficient_funds_and_changes_nothing(client):
    wallet_id = funded(client, 1_000)
    place(client, wallet_id, 600)
    before = everything(client, wallet_id)

    response = client.post(f"/v1/wallets/{wallet_id}/holds", json={"amount": 401})

    assert_problem(response, 422, "insufficient_funds")
    assert everything(client, wallet_id) == before


@pytest.mark.parametrize("action", ["freeze", "close"])
def test_a_hold_on_an_inactive_wallet_is_409_wallet_not_active(client, action):
    wallet_id = funded(client, 1_000 if action == "freeze" else 0)
    assert client.post(f"/v1/wallets/{wallet_id}/{action}").status_code == 200

    response = client.post(f"/v1/wallets/{wallet_id}/holds", json={"amount": 1})

    assert_problem(response, 409, "wallet_not_active")
    assert client.get(f"/v1/wallets/{wallet_id}/holds").json()["items"] == []


def test_capturing_from_a_frozen_wallet_is_409_and_leaves_the_hold_active(client):
    wallet_id = funded(client, 1_000)
    held = place(client, wallet_id, 500)
    assert client.post(f"/v1/wallets/{wallet_id}/freeze").status_code == 200
    before = everything(client, wallet_id)

    response = client.post(f"/v1/holds/{held['id']}/capture", json={"amount": 100})

    assert_problem(response, 409, "wallet_not_active")
    assert everything(client, wallet_id) == before
    assert hold(client, held["id"])["status"] == "active"


def test_capturing_to_a_frozen_wallet_is_409_wallet_not_active(client):
    wallet_id, payee = funded(client, 1_000), funded(client, 10)
    held = place(client, wallet_id, 500)
    assert client.post(f"/v1/wallets/{payee}/freeze").status_code == 200
    before = everything(client, wallet_id), everything(client, payee)

    response = client.post(f"/v1/holds/{held['id']}/capture", json={"to_wallet_id": payee})

    assert_problem(response, 409, "wallet_not_active")
    assert (everything(client, wallet_id), everything(client, payee)) == before


def test_capturing_more_than_remains_is_422_amount_exceeds_hold(client):
    wallet_id = funded(client, 10_000)
    held = place(client, wallet_id, 1_000)
    capture(client, held["id"], amount=600)
    before = everything(client, wallet_id)

    response = client.post(f"/v1/holds/{held['id']}/capture", json={"amount": 401})

    assert_problem(response, 422, "amount_exceeds_hold")
    assert everything(client, wallet_id) == before


def test_capturing_to_a_wallet_of_another_currency_is_422_currency_mismatch(client):
    wallet_id, dollars = funded(client, 1_000), open_wallet(client, currency="USD")["id"]
    held = place(client, wallet_id, 500)
    before = everything(client, wallet_id)

    response = client.post(f"/v1/holds/{held['id']}/capture", json={"to_wallet_id": dollars})

    assert_problem(response, 422, "currency_mismatch")
    assert everything(client, wallet_id) == before


def test_capturing_to_the_holds_own_wallet_is_422_same_wallet(client):
    wallet_id = funded(client, 1_000)
    held = place(client, wallet_id, 500)
    before = everything(client, wallet_id)

    response = client.post(f"/v1/holds/{held['id']}/capture", json={"to_wallet_id": wallet_id})

    assert_problem(response, 422, "same_wallet")
    assert everything(client, wallet_id) == before


def test_capturing_to_a_full_wallet_is_422_balance_limit_exceeded(client, shared_database_url):
    wallet_id = funded(client, 1_000)
    owner_id = fee_free_owner(client)
    full = open_wallet(client, owner_id)["id"]
    with psycopg.connect(shared_database_url, autocommit=True) as connection:
        # MAX_BALANCE in deposits of MAX_AMOUNT, through the ledger's own function.
        connection.execute(
            "SELECT wallet.deposit('test', NULL, NULL, NULL, %s::uuid, %s::bigint)"
            " FROM generate_series(1, %s)",
            (full, MAX_AMOUNT, MAX_BALANCE // MAX_AMOUNT),
        )
    assert money(client, full) == (MAX_BALANCE, 0, MAX_BALANCE)
    held = place(client, wallet_id, 500)
    before = everything(client, wallet_id)

    response = client.post(f"/v1/holds/{held['id']}/capture", json={"amount": 1, "to_wallet_id": full})

    assert_problem(response, 422, "balance_limit_exceeded")
    assert everything(client, wallet_id) == before
    assert money(client, full) == (MAX_BALANCE, 0, MAX_BALANCE)


def test_an_unknown_wallet_or_hold_is_404(client):
    unknown = str(uuid.uuid4())
    wallet_id = funded(client, 1_000)
    held = place(client, wallet_id, 100)

    responses = [
        client.post(f"/v1/wallets/{unknown}/holds", json={"amount": 1}),
        client.get(f"/v1/wallets/{unknown}/holds"),
        client.get(f"/v1/holds/{unknown}"),
        client.post(f"/v1/holds/{unknown}/capture", json={}),
        client.post(f"/v1/holds/{unknown}/void"),
        client.post(f"/v1/holds/{held['id']}/capture", json={"to_wallet_id": unknown}),
    ]

    for response in responses:
        assert_problem(response, 404, "not_found")
    assert hold(client, held["id"])["status"] == "active"


@pytest.mark.parametrize("path", ["/v1/holds/not-a-uuid", "/v1/holds/not-a-uuid/void", "/v1/wallets/x/holds"])
def test_a_malformed_id_is_400(client, path):
    response = client.get(path) if path.endswith(("uuid", "holds")) else client.post(path)

    assert_problem(response, 400, "invalid_request")


def test_holds_write_is_the_scope_of_place_capture_and_void(api_url, client, token):
    wallet_id = funded(client, 1_000)
    held = place(client, wallet_id, 100)
    others = ("wallets:read", "withdrawals:write", "transfers:write", "deposits:write")
    before = everything(client, wallet_id)

    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token(*others)}"}) as http:
        responses = [
            http.post(f"/v1/wallets/{wallet_id}/holds", json={"amount": 1}),
            http.post(f"/v1/holds/{held['id']}/capture", json={}),
            http.post(f"/v1/holds/{held['id']}/void"),
        ]
        reads = [http.get(f"/v1/holds/{held['id']}"), http.get(f"/v1/wallets/{wallet_id}/holds")]

    for response in responses:
        assert_problem(response, 403, "forbidden")
    assert [response.status_code for response in reads] == [200, 200]
    assert everything(client, wallet_id) == before
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token('holds:write')}"}) as http:
        assert http.post(f"/v1/holds/{held['id']}/void").status_code == 200


# --- idempotency --------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["place", "capture", "capture_to_wallet", "void"])
def test_a_replay_returns_the_first_response_and_acts_once(client, action):
    wallet_id, payee = funded(client, 10_000), open_wallet(client)["id"]
    held = place(client, wallet_id, 3_000)
    path, body, status = {
        "place": (f"/v1/wallets/{wallet_id}/holds", {"amount": 1_000}, 201),
        "capture": (f"/v1/holds/{held['id']}/capture", {"amount": 1_000}, 201),
        "capture_to_wallet": (f"/v1/holds/{held['id']}/capture", {"amount": 700, "to_wallet_id": payee}, 201),
        "void": (f"/v1/holds/{held['id']}/void", None, 200),
    }[action]
    key = {"Idempotency-Key": f"hold-{action}-{uuid.uuid4()}"}
    before = everything(client, wallet_id), everything(client, payee)

    first = client.post(path, json=body, headers=key)
    after_first = everything(client, wallet_id), everything(client, payee)
    replays = [client.post(path, json=body, headers=key) for _ in range(2)]

    assert first.status_code == status, first.text
    assert "idempotent-replayed" not in first.headers
    assert after_first != before, "the first request acts"
    for replay in replays:
        assert replay.status_code == status
        assert replay.headers.get("idempotent-replayed") == "true"
        assert replay.content == first.content
        assert replay.headers.get("location") == first.headers.get("location")
    assert (everything(client, wallet_id), everything(client, payee)) == after_first


def test_the_same_key_with_another_capture_is_409_and_captures_nothing(client):
    wallet_id = funded(client, 10_000)
    held = place(client, wallet_id, 3_000)
    key = {"Idempotency-Key": f"capture-{uuid.uuid4()}"}
    assert client.post(f"/v1/holds/{held['id']}/capture", json={"amount": 10}, headers=key).status_code == 201
    before = everything(client, wallet_id)

    response = client.post(f"/v1/holds/{held['id']}/capture", json={"amount": 11}, headers=key)

    assert_problem(response, 409, "idempotency_key_reused")
    assert everything(client, wallet_id) == before


# --- tenancy ------------------------------------------------------------------------------------------


def test_an_owners_token_gets_404_for_another_owners_hold_and_changes_nothing(client, api_url, token):
    theirs = funded(client, 5_000)
    their_hold = place(client, theirs, 1_000)
    mine = funded(client, 5_000)
    before = everything(client, theirs)

    with owner_client(api_url, token, wallet(client, mine)["owner_id"]) as owner:
        responses = [
            owner.get(f"/v1/holds/{their_hold['id']}"),
            owner.post(f"/v1/holds/{their_hold['id']}/capture", json={}),
            owner.post(f"/v1/holds/{their_hold['id']}/capture", json={"to_wallet_id": mine}),
            owner.post(f"/v1/holds/{their_hold['id']}/void"),
            owner.get(f"/v1/wallets/{theirs}/holds"),
            owner.post(f"/v1/wallets/{theirs}/holds", json={"amount": 1}),
        ]

    for response in responses:
        assert_problem(response, 404, "not_found")
        assert their_hold["id"] not in response.text
    assert everything(client, theirs) == before


def test_an_owners_token_acts_on_its_own_holds_and_may_capture_to_anyones_wallet(client, api_url, token):
    owner_id = fee_free_owner(client)
    mine, theirs = funded(client, 5_000, owner_id), funded(client, 100)

    with owner_client(api_url, token, owner_id) as owner:
        placed = owner.post(f"/v1/wallets/{mine}/holds", json={"amount": 2_000})
        assert placed.status_code == 201, placed.text
        held = placed.json()
        paid = owner.post(f"/v1/holds/{held['id']}/capture", json={"amount": 1_500, "to_wallet_id": theirs})
        listed = owner.get(f"/v1/wallets/{mine}/holds")
        voided = owner.post(f"/v1/holds/{held['id']}/void")

    assert paid.status_code == 201, paid.text
    assert_capture(paid.json(), hold_id=held["id"], wallet_id=mine, amount=1_500, to_wallet_id=theirs)
    assert [item["id"] for item in listed.json()["items"]] == [held["id"]]
    assert voided.status_code == 200, voided.text
    assert money(client, mine) == (3_500, 0, 3_500)
    assert money(client, theirs) == (1_600, 0, 1_600)


# --- listing ------------------------------------------------------------------------------------------


@pytest.fixture
def many_holds(client) -> Iterator[tuple[str, dict[str, list[str]]]]:
    """A wallet with seven holds: three active, two captured, two voided; yields its id and the
    hold ids by status, newest first."""
    wallet_id = funded(client, 100_000)
    placed = [place(client, wallet_id, 1_000 + n)["id"] for n in range(7)]
    by_status: dict[str, list[str]] = {"active": [], "captured": [], "voided": []}
    for number, hold_id in enumerate(placed):
        if number in (1, 4):
            capture(client, hold_id)
            by_status["captured"].insert(0, hold_id)
        elif number in (2, 5):
            assert client.post(f"/v1/holds/{hold_id}/void").status_code == 200
            by_status["voided"].insert(0, hold_id)
        else:
            by_status["active"].insert(0, hold_id)
    by_status["all"] = placed[::-1]
    yield wallet_id, by_status


def walk(http: httpx.Client, wallet_id: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for _ in range(100):
        response = http.get(f"/v1/wallets/{wallet_id}/holds", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == PAGE_FIELDS
        assert len(page["items"]) <= params.get("limit", 50)
        items.extend(page["items"])
        if page["next_cursor"] is None:
            return items
        params["cursor"] = page["next_cursor"]
    raise AssertionError("the listing did not end")


def test_listing_pages_newest_first_without_duplicates(client, many_holds):
    wallet_id, ids = many_holds

    for limit in (1, 2, 3, 7, 50):
        items = walk(client, wallet_id, limit=limit)
        assert [item["id"] for item in items] == ids["all"], limit
    for item in walk(client, wallet_id):
        assert set(item) == HOLD_FIELDS
        assert item == hold(client, item["id"])


@pytest.mark.parametrize("status", ["active", "captured", "voided", "expired"])
def test_the_status_filter_keeps_only_that_status(client, many_holds, status):
    wallet_id, ids = many_holds

    items = walk(client, wallet_id, status=status, limit=2)

    assert [item["id"] for item in items] == ids.get(status, [])
    assert {item["status"] for item in items} <= {status}


def test_an_exact_last_page_has_no_next_cursor(client, many_holds):
    wallet_id, _ = many_holds

    page = client.get(f"/v1/wallets/{wallet_id}/holds", params={"limit": 7}).json()

    assert len(page["items"]) == 7 and page["next_cursor"] is None


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"limit": "ten"},
        {"status": "open"},
        {"status": "ACTIVE"},
        {"cursor": "AAAAAAAAAAA"},
        {"cursor": "A" * 21 + "+"},
        {"cursor": "A" * 22 + "\n"},
    ],
)
def test_a_bad_listing_parameter_is_400(client, params):
    wallet_id = open_wallet(client)["id"]

    assert_problem(client.get(f"/v1/wallets/{wallet_id}/holds", params=params), 400, "invalid_request")


@pytest.mark.parametrize("limit", [1, 500])
def test_listing_limit_bounds_are_accepted(client, limit):
    wallet_id = funded(client, 10)
    place(client, wallet_id, 10)

    response = client.get(f"/v1/wallets/{wallet_id}/holds", params={"limit": limit})

    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == 1


# --- strict bodies and expires_at -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"amount": "10"},
        {"amount": 10.0},
        {"amount": 1e3},
        {"amount": 0},
        {"amount": -5},
        {"amount": MAX_AMOUNT + 1},
        {"amount": True},
        {"amount": 10, "currency": "IRR"},
        {"amount": 10, "reference": ""},
        {"amount": 10, "metadata": []},
        {},
        [],
        "10",
    ],
    ids=repr,
)
def test_a_malformed_hold_body_is_400_and_places_nothing(client, body):
    wallet_id = funded(client, 1_000)
    before = everything(client, wallet_id)

    response = client.post(f"/v1/wallets/{wallet_id}/holds", json=body)

    assert_problem(response, 400, "invalid_request")
    assert everything(client, wallet_id) == before


@pytest.mark.parametrize(
    "body",
    [
        {"amount": "10"},
        {"amount": 10.0},
        {"amount": 0},
        {"to_wallet_id": "not-a-uuid"},
        {"final": "true"},
        {"final": 1},
        {"amount": 10, "reference": "x"},
        [],
    ],
    ids=repr,
)
def test_a_malformed_capture_body_is_400_and_captures_nothing(client, body):
    wallet_id = funded(client, 1_000)
    held = place(client, wallet_id, 500)
    before = everything(client, wallet_id)

    response = client.post(f"/v1/holds/{held['id']}/capture", json=body)

    assert_problem(response, 400, "invalid_request")
    assert everything(client, wallet_id) == before


def test_expires_at_with_any_offset_is_kept_as_that_instant(client):
    wallet_id = funded(client, 1_000)
    moment = (datetime.now(TEHRAN) + timedelta(days=30)).replace(microsecond=0)

    placed = place(client, wallet_id, 100, expires_at=moment.isoformat())

    assert parse_time(placed["expires_at"]) == moment


def test_expires_at_366_days_ahead_is_accepted(client):
    moment = datetime.now(UTC) + timedelta(days=366) - timedelta(minutes=1)

    placed = place(client, funded(client, 100), 100, expires_at=moment.isoformat())

    assert parse_time(placed["expires_at"]) == moment


@pytest.mark.parametrize(
    "expires_at",
    [
        "past",
        "now",
        "beyond_366_days",
        "2027-01-01T00:00:00",  # no offset
        "2027-01-01",
        "tomorrow",
        "9999-12-31T23:59:59-14:00",  # the year 10000 in UTC
    ],
)
def test_expires_at_outside_its_bounds_or_without_an_offset_is_400(client, expires_at):
    now = datetime.now(UTC)
    value = {
        "past": (now - timedelta(minutes=5)).isoformat(),
        "now": now.isoformat(),
        "beyond_366_days": (now + timedelta(days=366, minutes=5)).isoformat(),
    }.get(expires_at, expires_at)
    wallet_id = funded(client, 1_000)
    before = everything(client, wallet_id)

    response = client.post(f"/v1/wallets/{wallet_id}/holds", json={"amount": 10, "expires_at": value})

    assert_problem(response, 400, "invalid_request")
    assert everything(client, wallet_id) == before


# --- history and metrics ---------------------------------------------------------------------------


def test_history_shows_captures_with_the_hold_id_and_nothing_for_place_or_void(client):
    wallet_id = funded(client, 10_000)
    first, second = place(client, wallet_id, 3_000), place(client, wallet_id, 2_000)
    captured = capture(client, first["id"], amount=1_200)
    assert client.post(f"/v1/holds/{second['id']}/void").status_code == 200

    items = history(client, wallet_id)["items"]

    assert [(item["kind"], item["amount"]) for item in items] == [("withdrawal", -1_200), ("deposit", 10_000)]
    assert items[0]["transaction_id"] == captured["id"]
    assert items[0]["balance_after"] == 8_800
    assert [item["hold_id"] for item in items] == [first["id"], None]
    read = client.get(f"/v1/transactions/{captured['id']}").json()
    assert read["hold_id"] == first["id"]
    deposit_id = items[1]["transaction_id"]
    assert client.get(f"/v1/transactions/{deposit_id}").json()["hold_id"] is None
    # Filtered and paged, a capture's item keeps its hold_id.
    withdrawals = history(client, wallet_id, kind="withdrawal")["items"]
    assert [(item["transaction_id"], item["hold_id"]) for item in withdrawals] == [
        (captured["id"], first["id"])
    ]
    first_page = history(client, wallet_id, limit=1)
    assert [item["hold_id"] for item in first_page["items"]] == [first["id"]]
    rest = history(client, wallet_id, limit=1, cursor=first_page["next_cursor"])["items"]
    assert [(item["kind"], item["hold_id"]) for item in rest] == [("deposit", None)]


def test_metrics_count_holds_captures_and_voids(client):
    wallet_id = funded(client, 1_000)
    held = place(client, wallet_id, 500)
    capture(client, held["id"], amount=100)
    client.post(f"/v1/holds/{held['id']}/void")

    lines = client.get("/metrics").text.splitlines()

    for kind, outcome in (("hold", "active"), ("capture", "posted"), ("void", "voided")):
        prefix = f'wallet_money_movements_total{{kind="{kind}",outcome="{outcome}"}}'
        assert any(line.startswith(prefix) for line in lines), prefix
