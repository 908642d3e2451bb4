"""Malformed requests: each is a 400 (or 413) problem+json, changes nothing, and never leaks or 5xx's."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.api.helpers import (
    assert_clean,
    assert_problem,
    funded_wallet,
    open_wallet,
    state,
    unique,
)

JSON = {"content-type": "application/json"}
MAX_BODY_BYTES = 65536  # WALLET_MAX_BODY_BYTES' default


@dataclass(frozen=True)
class Target:
    wallet_id: str
    counterpart_id: str
    owner_id: str


@pytest.fixture(scope="module")
def service(api_url: str, token) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token()}"}, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def target(service: httpx.Client) -> Target:
    """Two funded wallets of one owner that no request of this module may change."""
    owner_id = unique("malformed")
    wallet = funded_wallet(service, 10_000, owner_id)
    counterpart = funded_wallet(service, 10_000, owner_id)
    return Target(wallet["id"], counterpart["id"], owner_id)


def snapshot(service: httpx.Client, target: Target) -> list[dict]:
    """The owner's wallets, whole: any movement, status change or new wallet shows here
    (a write also moves updated_at)."""
    response = service.get("/v1/wallets", params={"owner_id": target.owner_id})
    assert response.status_code == 200, response.text
    return response.json()["items"]


def movement(route: str, target: Target, amount_json: str, extra: str = "") -> tuple[str, bytes]:
    """The path and raw body of a money movement with `amount_json` written as is."""
    if route == "transfer":
        body = (
            f'{{"from_wallet_id": "{target.wallet_id}", "to_wallet_id": "{target.counterpart_id}", '
            f'"amount": {amount_json}{extra}}}'
        )
        return "/v1/transfers", body.encode()
    kind = {"deposit": "deposits", "withdrawal": "withdrawals"}[route]
    return f"/v1/wallets/{target.wallet_id}/{kind}", f'{{"amount": {amount_json}{extra}}}'.encode()


def assert_refused_and_unchanged(service, target, before, response, status=400, code="invalid_request"):
    assert_problem(response, status, code)
    assert snapshot(service, target) == before


MOVEMENTS = ["deposit", "withdrawal", "transfer"]

BAD_AMOUNTS = {
    "float": "10.0",
    "exponent": "1e3",
    "fraction": "10.5",
    "string": '"10"',
    "true": "true",
    "false": "false",
    "null": "null",
    "zero": "0",
    "negative": "-10",
    "above_10_15": str(10**15 + 1),
    "beyond_bigint": str(2**63),
    "huge": str(10**30),
    "nan": "NaN",
    "infinity": "Infinity",
    "minus_infinity": "-Infinity",
    "object": '{"value": 10}',
    "array": "[10]",
}


@pytest.mark.parametrize("amount", sorted(BAD_AMOUNTS))
@pytest.mark.parametrize("route", MOVEMENTS)
def test_a_bad_amount_is_400_and_changes_nothing(service, target, route, amount):
    before = snapshot(service, target)
    path, body = movement(route, target, BAD_AMOUNTS[amount])

    response = service.post(path, content=body, headers=JSON)

    assert_refused_and_unchanged(service, target, before, response)


@pytest.mark.parametrize("route", MOVEMENTS)
def test_the_largest_amount_is_accepted(service, route):
    """10^15 is inside the bound: refused for lack of money, never as invalid."""
    wallet, counterpart = open_wallet(service), open_wallet(service)
    target = Target(wallet["id"], counterpart["id"], wallet["owner_id"])
    path, body = movement(route, target, str(10**15))

    response = service.post(path, content=body, headers=JSON)

    if route == "deposit":
        assert response.status_code == 201, response.text
        assert response.json()["amount"] == 10**15
    else:
        assert_problem(response, 422, "insufficient_funds")


BAD_BODIES = {
    "array": b'[{"amount": 10}]',
    "json_null": b"null",
    "json_string": b'"amount"',
    "truncated": b'{"amount": 10',
    "trailing_garbage": b'{"amount": 10} x',
    "empty": b"",
    "whitespace": b"   ",
    "single_quotes": b"{'amount': 10}",
    "trailing_comma": b'{"amount": 10,}',
    "invalid_utf8": b'{"amount": 10, "reference": "\xe9"}',
    "lone_surrogate": b'{"amount": 10, "reference": "\\ud800"}',
    "missing_amount": b'{"reference": "r"}',
    "unknown_field": b'{"amount": 10, "note": "hello"}',
    "available_at_garbage": b'{"amount": 10, "available_at": "tomorrow"}',
    "metadata_string": b'{"amount": 10, "metadata": "meta"}',
    "metadata_array": b'{"amount": 10, "metadata": [1, 2]}',
    "metadata_number": b'{"amount": 10, "metadata": 1}',
    "metadata_null": b'{"amount": 10, "metadata": null}',
    "metadata_too_large": json.dumps({"amount": 10, "metadata": {"k": "x" * 4200}}).encode(),
    "metadata_many_keys": json.dumps({"amount": 10, "metadata": {f"k{i}": i for i in range(600)}}).encode(),
    "metadata_deep_and_large": b'{"amount": 10, "metadata": {"a": ' + b"[" * 20_000 + b"]" * 20_000 + b"}}",
    "metadata_nul_character": b'{"amount": 10, "metadata": {"a": "\\u0000"}}',
    "reference_256": json.dumps({"amount": 10, "reference": "r" * 256}).encode(),
    "reference_empty": b'{"amount": 10, "reference": ""}',
    "reference_number": b'{"amount": 10, "reference": 5}',
    "reference_nul_character": b'{"amount": 10, "reference": "a\\u0000b"}',
}


@pytest.mark.parametrize("body", sorted(BAD_BODIES))
@pytest.mark.parametrize("route", ["deposit", "withdrawal"])
def test_a_malformed_body_is_400_and_changes_nothing(service, target, route, body):
    before = snapshot(service, target)
    path, _ = movement(route, target, "10")

    response = service.post(path, content=BAD_BODIES[body], headers=JSON)

    assert_refused_and_unchanged(service, target, before, response)


@pytest.mark.parametrize(
    "body",
    [
        {"to_wallet_id": "{counterpart}", "amount": 10},
        {"from_wallet_id": "{wallet}", "amount": 10},
        {"from_wallet_id": "nope", "to_wallet_id": "{counterpart}", "amount": 10},
        {"from_wallet_id": "{wallet}", "to_wallet_id": "123", "amount": 10},
        {"from_wallet_id": "{wallet}", "to_wallet_id": None, "amount": 10},
        {"from_wallet_id": "{wallet}", "to_wallet_id": "{counterpart}", "amount": 10, "fee": 0},
        {"from_wallet_id": "{wallet}", "to_wallet_id": "{counterpart}", "amount": 10, "reference": "r" * 256},
        {"from_wallet_id": "{wallet}", "to_wallet_id": "{counterpart}", "amount": 10, "metadata": []},
    ],
    ids=[
        "no_from",
        "no_to",
        "from_not_uuid",
        "to_not_uuid",
        "to_null",
        "unknown_field",
        "reference_256",
        "metadata_array",
    ],
)
def test_a_malformed_transfer_is_400_and_changes_nothing(service, target, body):
    before = snapshot(service, target)
    ids = {"{wallet}": target.wallet_id, "{counterpart}": target.counterpart_id}
    body = {key: ids.get(value, value) if isinstance(value, str) else value for key, value in body.items()}

    response = service.post("/v1/transfers", json=body)

    assert_refused_and_unchanged(service, target, before, response)


def test_a_metadata_of_4000_bytes_is_accepted(service):
    wallet = open_wallet(service)

    response = service.post(
        f"/v1/wallets/{wallet['id']}/deposits", json={"amount": 10, "metadata": {"k": "x" * 4000}}
    )

    assert response.status_code == 201, response.text
    assert response.json()["metadata"] == {"k": "x" * 4000}


def test_a_reference_of_255_characters_is_accepted(service):
    wallet = open_wallet(service)

    response = service.post(
        f"/v1/wallets/{wallet['id']}/deposits", json={"amount": 10, "reference": "é" * 255}
    )

    assert response.status_code == 201, response.text
    assert response.json()["reference"] == "é" * 255


def test_deeply_nested_small_metadata_is_never_a_server_error(service):
    """A 2 KB metadata nested 1000 deep is inside the byte bound: accepted, or refused as invalid."""
    wallet = open_wallet(service)
    body = b'{"amount": 10, "metadata": {"a": ' + b"[" * 1000 + b"]" * 1000 + b"}}"

    response = service.post(f"/v1/wallets/{wallet['id']}/deposits", content=body, headers=JSON)

    assert_clean(response)
    if response.status_code != 201:
        assert_problem(response, 400, "invalid_request")
        assert state(service, wallet["id"])[0] == 0


NON_JSON = {
    "text_garbage": ("text/plain", b"give me money"),
    "form_garbage": ("application/x-www-form-urlencoded", b"amount=10"),
    "xml": ("application/xml", b"<deposit><amount>10</amount></deposit>"),
    "binary": ("application/octet-stream", bytes(range(256))),
}


@pytest.mark.parametrize("kind", sorted(NON_JSON))
def test_a_non_json_body_is_400_and_changes_nothing(service, target, kind):
    before = snapshot(service, target)
    content_type, body = NON_JSON[kind]

    response = service.post(
        f"/v1/wallets/{target.wallet_id}/deposits", content=body, headers={"content-type": content_type}
    )

    assert_refused_and_unchanged(service, target, before, response)


BAD_OPEN_WALLET = {
    "owner_id_empty": {"owner_id": ""},
    "owner_id_256": {"owner_id": "o" * 256},
    "owner_id_missing": {"currency": "IRR"},
    "owner_id_number": {"owner_id": 42},
    "owner_id_null": {"owner_id": None},
    "owner_id_nul_character": {"owner_id": "a\u0000b"},
    "currency_lower_case": {"owner_id": "{owner}", "currency": "irr"},
    "currency_four_letters": {"owner_id": "{owner}", "currency": "IRRR"},
    "currency_two_letters": {"owner_id": "{owner}", "currency": "IR"},
    "currency_digits": {"owner_id": "{owner}", "currency": "123"},
    "currency_null": {"owner_id": "{owner}", "currency": None},
    "metadata_string": {"owner_id": "{owner}", "metadata": "x"},
    "metadata_too_large": {"owner_id": "{owner}", "metadata": {"k": "x" * 4200}},
    "unknown_field": {"owner_id": "{owner}", "balance": 1000},
    "status_field": {"owner_id": "{owner}", "status": "frozen"},
}


@pytest.mark.parametrize("body", sorted(BAD_OPEN_WALLET))
def test_a_malformed_open_wallet_is_400_and_opens_nothing(service, target, body):
    before = snapshot(service, target)
    payload = {
        key: target.owner_id if value == "{owner}" else value for key, value in BAD_OPEN_WALLET[body].items()
    }

    response = service.post("/v1/wallets", json=payload)

    assert_refused_and_unchanged(service, target, before, response)


def test_an_owner_id_of_255_characters_is_accepted(service):
    owner_id = "o" * 223 + uuid.uuid4().hex

    response = service.post("/v1/wallets", json={"owner_id": owner_id})

    assert response.status_code == 201, response.text
    assert response.json()["owner_id"] == owner_id


BAD_IDS = {
    "word": "nope",
    "number": "123",
    "extra_character": "{id}x",
    "extra_digits": "{id}00",
    "one_short": "{id_short}",
    "space": "{id} ",
}
PATH_ROUTES = {
    "get": ("GET", "/v1/wallets/{}"),
    "freeze": ("POST", "/v1/wallets/{}/freeze"),
    "unfreeze": ("POST", "/v1/wallets/{}/unfreeze"),
    "close": ("POST", "/v1/wallets/{}/close"),
    "deposit": ("POST", "/v1/wallets/{}/deposits"),
    "withdrawal": ("POST", "/v1/wallets/{}/withdrawals"),
    "history": ("GET", "/v1/wallets/{}/transactions"),
    "transaction": ("GET", "/v1/transactions/{}"),
}


@pytest.mark.parametrize("bad_id", sorted(BAD_IDS))
@pytest.mark.parametrize("route", sorted(PATH_ROUTES))
def test_a_malformed_id_in_the_path_is_400_and_changes_nothing(service, target, route, bad_id):
    before = snapshot(service, target)
    method, template = PATH_ROUTES[route]
    wallet_id = BAD_IDS[bad_id].format(id=target.wallet_id, id_short=target.wallet_id[:-1])
    body = {"amount": 10} if method == "POST" else None

    response = service.request(method, template.format(wallet_id), json=body)

    assert_refused_and_unchanged(service, target, before, response)


@pytest.mark.parametrize("route", ["deposit", "withdrawal", "transfer"])
def test_a_body_over_the_limit_is_413_and_changes_nothing(service, target, route):
    before = snapshot(service, target)
    path, body = movement(route, target, "10", extra=', "metadata": {"k": "' + "x" * 100_000 + '"}')

    response = service.post(path, content=body, headers=JSON)

    assert_refused_and_unchanged(service, target, before, response, status=413, code="payload_too_large")


def test_a_chunked_body_over_the_limit_is_413_and_changes_nothing(service, target):
    """Without a Content-Length, the limit holds while reading."""
    before = snapshot(service, target)

    def chunks() -> Iterator[bytes]:
        yield b'{"amount": 10, "metadata": {"k": "'
        for _ in range(25):
            yield b"x" * 4096
        yield b'"}}'

    response = service.post(f"/v1/wallets/{target.wallet_id}/deposits", content=chunks(), headers=JSON)

    assert_refused_and_unchanged(service, target, before, response, status=413, code="payload_too_large")


def test_a_body_of_exactly_the_limit_is_read(service):
    wallet = open_wallet(service)
    body = b'{"amount": 10}'

    at_limit = service.post(
        f"/v1/wallets/{wallet['id']}/deposits", content=body.ljust(MAX_BODY_BYTES), headers=JSON
    )
    over = service.post(
        f"/v1/wallets/{wallet['id']}/deposits", content=body.ljust(MAX_BODY_BYTES + 1), headers=JSON
    )

    assert at_limit.status_code == 201, at_limit.text
    assert_problem(over, 413, "payload_too_large")
    assert state(service, wallet["id"])[0] == 10


BAD_KEYS = {
    "empty": b"",
    "256_characters": b"k" * 256,
    "non_ascii": "\xe9".encode("latin-1"),
    "non_ascii_inside": b"key-\xe9-1",
    "tab_inside": b"key\t1",
}
KEYED_ROUTES = ["open_wallet", "deposit", "withdrawal", "transfer", "freeze"]


@pytest.mark.parametrize("key", sorted(BAD_KEYS))
@pytest.mark.parametrize("route", KEYED_ROUTES)
def test_a_malformed_idempotency_key_is_400_and_changes_nothing(service, target, route, key):
    before = snapshot(service, target)
    path, body = {
        "open_wallet": ("/v1/wallets", json.dumps({"owner_id": target.owner_id}).encode()),
        "freeze": (f"/v1/wallets/{target.wallet_id}/freeze", b""),
    }.get(route) or movement(route, target, "10")

    response = service.post(path, content=body, headers=JSON | {"Idempotency-Key": BAD_KEYS[key]})

    assert_refused_and_unchanged(service, target, before, response)


def test_an_idempotency_key_of_255_printable_characters_is_accepted(service):
    wallet = open_wallet(service)
    # Every printable character; a space only inside, as HTTP strips a header value's edges.
    printable = "".join(chr(33 + index % 94) for index in range(255))
    key = printable[:100] + " " + printable[101:]

    first = service.post(
        f"/v1/wallets/{wallet['id']}/deposits", json={"amount": 10}, headers={"Idempotency-Key": key}
    )
    again = service.post(
        f"/v1/wallets/{wallet['id']}/deposits", json={"amount": 10}, headers={"Idempotency-Key": key}
    )

    assert first.status_code == 201, first.text
    assert again.headers.get("idempotent-replayed") == "true"
    assert state(service, wallet["id"])[0] == 10


BAD_RULES = {
    "array": [],
    "strings": {"rate_bps": "1", "fixed": "0", "min_fee": "0", "max_fee": None},
    "floats": {"rate_bps": 1.5, "fixed": 0, "min_fee": 0, "max_fee": None},
    "unknown_field": {"rate_bps": 1, "fixed": 0, "min_fee": 0, "max_fee": None, "currency": "IRR"},
    "owner_id_empty": {"rate_bps": 1, "fixed": 0, "min_fee": 0, "max_fee": None, "owner_id": ""},
    "owner_id_256": {"rate_bps": 1, "fixed": 0, "min_fee": 0, "max_fee": None, "owner_id": "o" * 256},
    "negative_min_fee": {"rate_bps": 1, "fixed": 0, "min_fee": -1, "max_fee": None},
    "negative_max_fee": {"rate_bps": 1, "fixed": 0, "min_fee": 0, "max_fee": -1},
}


@pytest.mark.parametrize("body", sorted(BAD_RULES))
def test_a_malformed_commission_rule_is_400_and_sets_nothing(service, body):
    rules_before = service.get("/v1/commission-rules").json()
    payload = BAD_RULES[body]
    if isinstance(payload, dict) and "owner_id" not in payload:
        # Never the default rule: other tests share this server.
        payload = payload | {"owner_id": unique("rule")}

    response = service.put("/v1/commission-rules/transfer", json=payload)

    assert_problem(response, 400, "invalid_request")
    assert service.get("/v1/commission-rules").json() == rules_before


BAD_QUERIES = {
    "limit_word": ("/v1/wallets", {"limit": "ten"}),
    "limit_float": ("/v1/wallets", {"limit": "1.5"}),
    "limit_huge": ("/v1/wallets", {"limit": str(10**30)}),
    "owner_id_256": ("/v1/wallets", {"owner_id": "o" * 256}),
    "cursor_long": ("/v1/wallets", {"cursor": "A" * 1000}),
    "history_kind": ("/v1/wallets/{wallet}/transactions", {"kind": "DEPOSIT"}),
    "history_since_naive": ("/v1/wallets/{wallet}/transactions", {"since": "2025-01-01T00:00:00"}),
    "history_until_garbage": ("/v1/wallets/{wallet}/transactions", {"until": "soon"}),
    "history_limit_zero": ("/v1/wallets/{wallet}/transactions", {"limit": "0"}),
    "history_limit_501": ("/v1/wallets/{wallet}/transactions", {"limit": "501"}),
}


@pytest.mark.parametrize("query", sorted(BAD_QUERIES))
def test_a_malformed_query_is_400(service, target, query):
    path, params = BAD_QUERIES[query]

    response = service.get(path.format(wallet=target.wallet_id), params=params)

    assert_problem(response, 400, "invalid_request")
