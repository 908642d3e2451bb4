"""Tenancy of commission rules (SPEC 3, issue 9 item 10): an owner's token sets no rule, and
reads only the rules that apply to its own owner: per operation its own rule, else the default.
Each test has a server and database of its own: default rules are global."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.api.helpers import assert_problem, funded_wallet, open_wallet, unique


@pytest.fixture
def service(fresh_api: str, token) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fresh_api, headers={"Authorization": f"Bearer {token()}"}, timeout=30) as http:
        yield http


def owner_client(service: httpx.Client, token, owner_id: str) -> httpx.Client:
    """A client whose token has every scope, commissions:write included, but is limited to owner_id."""
    return httpx.Client(
        base_url=service.base_url,
        headers={"Authorization": f"Bearer {token(sub=unique('merchant'), owner_id=owner_id)}"},
        timeout=30,
    )


def put_rule(http: httpx.Client, operation: str, owner_id: str | None, fixed: int) -> httpx.Response:
    body = {"rate_bps": 0, "fixed": fixed, "min_fee": 0, "max_fee": None, "owner_id": owner_id}
    return http.put(f"/v1/commission-rules/{operation}", json=body)


def rules(http: httpx.Client) -> list[dict]:
    response = http.get("/v1/commission-rules")
    assert response.status_code == 200, response.text
    return response.json()["items"]


@pytest.mark.parametrize("target", ["default", "another_owner", "own_owner"])
def test_an_owner_token_may_set_no_rule_and_changes_nothing(service, token, target):
    owner_id, other_owner = unique("shop"), unique("shop")
    assert put_rule(service, "transfer", other_owner, 5).status_code == 200
    assert put_rule(service, "transfer", None, 3).status_code == 200
    before = rules(service)
    rule_owner = {"default": None, "another_owner": other_owner, "own_owner": owner_id}[target]

    with owner_client(service, token, owner_id) as owner:
        response = put_rule(owner, "transfer", rule_owner, 10**6)

    assert_problem(response, 403, "forbidden")
    assert rules(service) == before


def test_an_owner_token_pays_the_fees_it_could_not_change(service, token):
    """The audit's attack: an owner's token made another owner pay a 100% transfer fee."""
    owner_id, victim = unique("shop"), unique("shop")
    sender, receiver = funded_wallet(service, 10_000, victim), open_wallet(service)
    transfer = {"from_wallet_id": sender["id"], "to_wallet_id": receiver["id"], "amount": 1000}
    fee_before = service.post("/v1/transfers", json=transfer).json()["fee"]

    with owner_client(service, token, owner_id) as owner:
        attack = owner.put(
            "/v1/commission-rules/transfer",
            json={"rate_bps": 10000, "fixed": 0, "min_fee": 0, "max_fee": None, "owner_id": victim},
        )

    assert_problem(attack, 403, "forbidden")
    moved = service.post("/v1/transfers", json=transfer)
    assert moved.status_code == 201, moved.text
    assert moved.json()["fee"] == fee_before < 1000


def test_an_owner_token_lists_only_the_rules_that_apply_to_its_owner(service, token):
    owner_a, owner_b, owner_c = unique("shop-a"), unique("shop-b"), unique("shop-c")
    for operation, owner_id, fixed in [
        ("deposit", None, 1),
        ("withdrawal", None, 2),
        ("transfer", None, 3),
        ("transfer", owner_a, 40),
        ("transfer", owner_a, 41),  # the newer rule of A's is the one in force
        ("deposit", owner_b, 50),
        ("transfer", owner_b, 60),
    ]:
        assert put_rule(service, operation, owner_id, fixed).status_code == 200
    everything = rules(service)

    seen = {}
    for owner_id in (owner_a, owner_b, owner_c):
        with owner_client(service, token, owner_id) as owner:
            seen[owner_id] = {rule["operation"]: (rule["owner_id"], rule["fixed"]) for rule in rules(owner)}
            assert len(rules(owner)) == len(seen[owner_id]), "one rule per operation"

    assert seen[owner_a] == {"deposit": (None, 1), "withdrawal": (None, 2), "transfer": (owner_a, 41)}
    assert seen[owner_b] == {"deposit": (owner_b, 50), "withdrawal": (None, 2), "transfer": (owner_b, 60)}
    assert seen[owner_c] == {"deposit": (None, 1), "withdrawal": (None, 2), "transfer": (None, 3)}
    listed_owners = {rule["owner_id"] for rule in everything}
    assert {None, owner_a, owner_b} <= listed_owners, "a service token still lists every rule"


def test_an_owner_token_lists_no_rule_for_an_operation_without_one(service, token):
    owner_id = unique("shop")
    assert rules(service) == [], "a fresh database has no rule"
    assert put_rule(service, "withdrawal", owner_id, 7).status_code == 200
    assert put_rule(service, "deposit", unique("shop"), 8).status_code == 200

    with owner_client(service, token, owner_id) as owner:
        listed = rules(owner)

    assert [(rule["operation"], rule["owner_id"], rule["fixed"]) for rule in listed] == [
        ("withdrawal", owner_id, 7)
    ]
