"""The running service keeps the promises of its own OpenAPI document, whatever it is sent.

Schemathesis generates requests for every operation from /schema/openapi.json, both valid
ones (positive) and ones the schema forbids (negative), and sends them, authenticated with
an all-scopes service token, to a `wallet serve` of the test's own (generated writes stay
in its database). No answer may be a 5xx, and every answer must be documented: its status,
content type, headers and body.

One pytest test per operation: a failure names the operation and lists each distinct
finding once with a curl command that reproduces it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from litestar.handlers import HTTPRouteHandler
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api import probes
from api.app import API_CONTROLLERS
from tests.api.conftest import TokenFactory

EXAMPLES_PER_OPERATION = 30
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Read from the code when the tests are collected; test_every_served_operation_is_fuzzed
# fails if the served document lists any other set.
OPERATION_IDS = sorted(
    [
        handler.operation_id
        for controller in API_CONTROLLERS
        for handler in vars(controller).values()
        if isinstance(handler, HTTPRouteHandler)
    ]
    + [probes.healthz.operation_id, probes.readyz.operation_id]
)


def load_schema(base_url: str, bearer_token: str | None = None) -> Any:
    """The served document, with schemathesis authenticating generated requests itself: it
    then knows when a negative case drops the Authorization header on purpose."""
    config: dict[str, Any] = {
        # The contract is silent on unknown query parameters and headers; ignoring them is usual.
        "generation": {"allow-extra-parameters": False},
        "request-timeout": 30,
    }
    if bearer_token is not None:
        config["auth"] = {"openapi": {"bearer": {"bearer": bearer_token}}}
    return schemathesis.openapi.from_url(
        f"{base_url}/schema/openapi.json", config=schemathesis.Config.from_dict(config)
    )


@dataclass(frozen=True)
class Service:
    base_url: str
    bearer_token: str
    # Sets of real ids for path parameters, so generated requests reach the handlers' happy
    # paths and not only 404s: a funded wallet and its posted deposit; a wallet with only a
    # scheduled deposit, and that deposit; a wallet with nothing (it can be closed).
    id_sets: tuple[dict[str, str], ...]


@pytest.fixture
def service(fresh_api: str, token: TokenFactory) -> Iterator[Service]:
    """A fresh server, an all-scopes bearer token, and real ids to aim some requests at."""
    bearer_token = token()
    with httpx.Client(
        base_url=fresh_api, headers={"Authorization": f"Bearer {bearer_token}"}, timeout=30
    ) as http:

        def created(path: str, body: dict[str, Any]) -> str:
            response = http.post(path, json=body)
            assert response.status_code == 201, response.text
            return response.json()["id"]

        funded, pending, bare = (
            created("/v1/wallets", {"owner_id": f"fuzz-{uuid.uuid4().hex}"}) for _ in range(3)
        )
        posted = created(f"/v1/wallets/{funded}/deposits", {"amount": 10**9})
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        scheduled = created(f"/v1/wallets/{pending}/deposits", {"amount": 10**6, "available_at": tomorrow})
    yield Service(
        base_url=fresh_api,
        bearer_token=bearer_token,
        id_sets=(
            {"wallet_id": funded, "transaction_id": posted},
            {"wallet_id": pending, "transaction_id": scheduled},
            {"wallet_id": bare},
        ),
    )


def test_every_served_operation_is_fuzzed(api_url: str) -> None:
    """The parametrization below is read from the code; the served document must list exactly
    those operations, so none escapes the fuzzing."""
    schema = load_schema(api_url)
    operations = [result.ok() for result in schema.get_all_operations()]
    served = sorted(schema.get_operation_id(operation) or operation.label for operation in operations)
    assert served == OPERATION_IDS


def describe(failures: dict[tuple[str, ...], str]) -> str:
    return f"{len(failures)} distinct finding(s):\n\n" + "\n\n".join(failures.values())


@pytest.mark.parametrize("operation_id", OPERATION_IDS)
def test_operation_keeps_its_openapi_contract(service: Service, operation_id: str) -> None:
    base_url = service.base_url
    schema = load_schema(base_url, service.bearer_token)
    operation = schema.find_operation_by_id(operation_id)
    strategies = [operation.as_strategy(generation_mode=mode) for mode in GenerationMode]
    names = {parameter.name for parameter in operation.path_parameters}
    for ids in service.id_sets:
        if real_ids := {name: value for name, value in ids.items() if name in names}:
            strategies.append(operation.as_strategy(path_parameters=real_ids))
    if operation_id == "transfer":
        # Random wallet ids only ever meet 404: give some transfers two real wallets.
        funded, *others = (ids["wallet_id"] for ids in service.id_sets)
        strategies.append(
            st.tuples(st.sampled_from(others), st.integers(1, 10**6)).flatmap(
                lambda pair: operation.as_strategy(
                    body={"from_wallet_id": funded, "to_wallet_id": pair[0], "amount": pair[1]}
                )
            )
        )
    failures: dict[tuple[str, ...], str] = {}
    calls: list[int] = []

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        # Findings are collected, not raised: nothing to shrink.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(strategies))
    def send(case: Any) -> None:
        response = case.call(base_url=base_url)
        calls.append(response.status_code)
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            for failure in group.exceptions:
                key = (type(failure).__name__, failure.title, str(response.status_code))
                failures.setdefault(key, f"[{' / '.join(key)}]\n{group.message}")

    send()
    # An operation without parameters has one possible request; others have many.
    assert calls, f"{operation_id}: no request was sent"
    assert not failures, f"{operation_id}: " + describe(failures)
