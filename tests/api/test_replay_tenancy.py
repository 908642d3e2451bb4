"""Tenancy of replays (SPEC 3 and 6, issue 9 item 11): an idempotent replay checks ownership
before it returns the stored response. A token limited to owner B that reuses owner A's caller
id (`sub`) and Idempotency-Key meets 404 not_found, as for any other owner's object, and learns
nothing of A's wallet or transaction."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.api.helpers import assert_problem, open_wallet, state, unique


@pytest.fixture(scope="module")
def service(api_url: str, token) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token()}"}, timeout=30) as http:
        yield http


def prepare(service: httpx.Client, action: str, owner_id: str) -> tuple[str, str, str]:
    """The path of action on a fresh object of owner_id's, the wallet it concerns and the
    object's id (what a replay must not reveal)."""
    wallet = open_wallet(service, owner_id)
    if action == "unfreeze":
        assert service.post(f"/v1/wallets/{wallet['id']}/freeze").status_code == 200
    if action == "cancel":
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        response = service.post(
            f"/v1/wallets/{wallet['id']}/deposits", json={"amount": 5000, "available_at": tomorrow}
        )
        assert response.status_code == 201, response.text
        transaction_id = response.json()["id"]
        return f"/v1/transactions/{transaction_id}/cancel", wallet["id"], transaction_id
    return f"/v1/wallets/{wallet['id']}/{action}", wallet["id"], wallet["id"]


@pytest.mark.parametrize("action", ["cancel", "freeze", "unfreeze", "close"])
def test_a_replay_by_another_owner_with_the_same_sub_and_key_is_404(api_url, service, token, action):
    caller_id, owner_a, owner_b = unique("caller"), unique("shop-a"), unique("shop-b")
    path, wallet_id, object_id = prepare(service, action, owner_a)
    key = {"Idempotency-Key": f"replay-{uuid.uuid4()}"}
    as_a = {"Authorization": f"Bearer {token(sub=caller_id, owner_id=owner_a)}"}
    as_b = {"Authorization": f"Bearer {token(sub=caller_id, owner_id=owner_b)}"}
    with httpx.Client(base_url=api_url, timeout=30) as http:
        first = http.post(path, headers=as_a | key)
        assert first.status_code == 200, first.text
        after_first = state(service, wallet_id)

        replay = http.post(path, headers=as_b | key)
        own_replay = http.post(path, headers=as_a | key)

    assert_problem(replay, 404, "not_found")
    assert "idempotent-replayed" not in replay.headers
    assert object_id not in replay.text and wallet_id not in replay.text
    assert state(service, wallet_id) == after_first
    assert own_replay.status_code == 200, "the owner's own replay still answers as the first time"
    assert own_replay.headers.get("idempotent-replayed") == "true"
    assert own_replay.content == first.content
