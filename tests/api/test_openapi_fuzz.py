"""The running service keeps the promises of its own OpenAPI document, whatever it is sent.

Schemathesis, a client no one here wrote, reads /schema/openapi.json and sends requests the
document allows (positive) and forbids (negative) to a `wallet serve` of this module's own,
with every one of its checks on: no 5xx; every answer documented (status, content type,
headers, body); a request the document forbids is refused and one it allows is accepted
(tests/api/fuzz_contract.py names the few rules of the contract JSON Schema cannot state);
405 with Allow for a method the resource lacks; 401 without credentials.
tests/api/schemathesis.toml holds the settings both runs share.

Two runs:
- one pytest test per operation (fuzzing phase), some aimed at real wallets and transactions
  so they reach the handlers' happy paths; a failure names the operation and lists each
  distinct finding once with a curl command that reproduces it;
- the schemathesis command line with all its phases (examples, coverage: boundaries, missing
  and undeclared methods and headers; fuzzing; stateful: sequences through the ids the
  responses return). `make fuzz` runs it longer: WALLET_FUZZ_EXAMPLES examples per operation,
  a fresh seed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
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
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.errors import FailureGroup

from api import probes
from api.app import API_CONTROLLERS
from tests.api.fuzz_contract import excused
from tests.support.databases import cloned_database
from tests.support.processes import ROOT, running_server
from tests.support.tokens import TokenFactory

CONFIG_FILE = ROOT / "tests" / "api" / "schemathesis.toml"
EXAMPLES_PER_OPERATION = 30
# The command-line run: examples per operation and phase, and its seed (`make fuzz` sets both).
CLI_EXAMPLES = int(os.environ.get("WALLET_FUZZ_EXAMPLES") or 25)
CLI_SEED = os.environ.get("WALLET_FUZZ_SEED") or "1"
load_all_checks()
CHECKS_ON = CHECKS.get_all()  # every check schemathesis has
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
    config = tomllib.loads(CONFIG_FILE.read_text())
    del config["hooks"]  # the command line's way in; here fuzz_contract is imported
    config["auth"] = {"openapi": {"bearer": {"bearer": bearer_token}}} if bearer_token else {}
    return schemathesis.openapi.from_url(
        f"{base_url}/schema/openapi.json", config=schemathesis.Config.from_dict(config)
    )


@dataclass(frozen=True)
class Service:
    base_url: str
    bearer_token: str
    # Sets of real ids for path parameters, so generated requests reach the handlers' happy
    # paths and not only 404s: a funded wallet and its posted deposit; a wallet with only a
    # scheduled deposit, and that deposit; a wallet with nothing (it can be closed). The funded
    # wallet and the pending one each have an active hold.
    id_sets: tuple[dict[str, str], ...]


@pytest.fixture(scope="module")
def service(postgres_url: str, template_database: str, token: TokenFactory) -> Iterator[Service]:
    """A server of this module's own, on its own database (generated writes stay there), an
    all-scopes bearer token, and real ids to aim some requests at."""
    bearer_token = token()
    with (
        cloned_database(postgres_url, template_database, prefix="wallet_fuzz") as database_url,
        running_server(database_url) as base_url,
        httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {bearer_token}"}, timeout=30
        ) as http,
    ):

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
        held = created(f"/v1/wallets/{funded}/holds", {"amount": 10**8})
        # A wallet's pending money cannot be held: this hold is on the funded wallet too, and
        # stays small so that captures of the generated amounts often fit in it.
        small = created(f"/v1/wallets/{funded}/holds", {"amount": 1000})
        yield Service(
            base_url=base_url,
            bearer_token=bearer_token,
            id_sets=(
                {"wallet_id": funded, "transaction_id": posted, "hold_id": held},
                {"wallet_id": pending, "transaction_id": scheduled, "hold_id": small},
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
            case.validate_response(response, checks=CHECKS_ON)
        except FailureGroup as group:
            for failure in group.exceptions:
                if excused(failure, case, response):
                    continue
                key = (type(failure).__name__, failure.title, str(response.status_code))
                failures.setdefault(key, f"[{' / '.join(key)}]\n{group.message}")

    send()
    # An operation without parameters has one possible request; others have many.
    assert calls, f"{operation_id}: no request was sent"
    assert not failures, f"{operation_id}: " + describe(failures)


def test_schemathesis_command_line_finds_nothing(service: Service) -> None:
    """All of schemathesis's phases and checks, as an operator would run it; last in this
    module, as its stateful phase may freeze or close the wallets the tests above aim at."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(CONFIG_FILE),
            "run",
            f"{service.base_url}/schema/openapi.json",
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            str(CLI_EXAMPLES),
            "--seed",
            CLI_SEED,
            "--workers",
            "1",
            "--no-color",
        ],
        cwd=ROOT,
        env=os.environ | {"WALLET_FUZZ_TOKEN": service.bearer_token},
        capture_output=True,
        text=True,
        timeout=1800,
    )

    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
