"""One table (core/errors.py) maps SQLSTATE -> code -> HTTP status -> meaning; sql/, the API,
its OpenAPI document and docs/errors.md all agree with it."""

import re
import warnings
from pathlib import Path

import pytest

from api.app import create_app
from core.errors import BY_CODE, BY_SQLSTATE, ERRORS, markdown
from core.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]


def _sqlstates_raised_in_the_ledger() -> set[str]:
    found: set[str] = set()
    for path in [*(ROOT / "sql").glob("*.sql"), *(ROOT / "migrations").glob("*.sql")]:
        found |= set(re.findall(r"ERRCODE = '(W[A-Z]\d{3})'", path.read_text()))
    return found


def test_every_sqlstate_the_ledger_raises_is_in_the_table_and_back():
    assert _sqlstates_raised_in_the_ledger() == set(BY_SQLSTATE)


def test_each_code_is_in_the_table_once_and_its_sqlstate_ends_with_its_status():
    assert len(BY_CODE) == len(ERRORS)
    for error in BY_SQLSTATE.values():
        assert error.sqlstate[-3:] == str(error.status), error


def test_docs_errors_md_is_generated_from_the_table():
    assert (ROOT / "docs/errors.md").read_text() == markdown(), "run `make docs`"


def test_every_code_the_api_gives_is_in_the_table_with_its_status():
    given = set()
    for path in (ROOT / "api").glob("*.py"):
        given |= set(re.findall(r"(?:ApiError|problem)\(\s*(\d{3}),\s*\"(\w+)\"", path.read_text()))
    assert len(given) >= 8
    for status, code in given:
        assert BY_CODE[code].status == int(status), code


@pytest.fixture(scope="module")
def document() -> dict:
    settings = load_settings({"WALLET_JWT_SECRET": "s" * 40, "DATABASE_URL": "postgresql://unused/none"})
    # Building the document in this process meets Litestar 2.25's notices about Litestar 3
    # (inferred dependencies); the served document is the same.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return create_app(settings).openapi_schema.to_schema()


def test_each_operation_lists_its_error_codes_with_the_tables_status_and_meaning(document):
    listed = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                codes = re.findall(r"^- `(\w+)`: (.*)$", response["description"], re.M)
                assert codes, (method, path, status)
                for code, meaning in codes:
                    assert (BY_CODE[code].status, BY_CODE[code].meaning) == (int(status), meaning)
                    listed += 1
    assert listed > 50


def test_each_operation_has_a_summary_a_description_and_its_scope(document):
    from api.auth import SCOPES

    operations = [
        operation
        for path, methods in document["paths"].items()
        if path.startswith("/v1/")
        for operation in methods.values()
    ]
    assert len(operations) >= 15
    for operation in operations:
        assert operation["summary"] and len(operation["description"]) > 60, operation["operationId"]
        [requirement] = operation["security"]
        [scope] = requirement["bearer"]
        assert scope in SCOPES


def test_every_request_body_has_examples_the_server_accepts(document):
    import msgspec

    from api import schemas

    bodies = [name for name in document["components"]["schemas"] if name.endswith("Request")]
    assert len(bodies) >= 5
    for name in bodies:
        examples = document["components"]["schemas"][name]["examples"]
        assert examples, name
        for example in examples:
            msgspec.json.decode(msgspec.json.encode(example), type=getattr(schemas, name), strict=True)
