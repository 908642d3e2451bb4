"""One table maps SQLSTATE -> code -> HTTP status; sql/, api/errors.py and docs/errors.md agree."""

import re
from pathlib import Path

from api.errors import LEDGER_ERRORS, TITLES

ROOT = Path(__file__).resolve().parents[1]


def _sqlstates_raised_in(folder: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / folder).glob("*.sql"):
        found |= set(re.findall(r"ERRCODE = '(W[A-Z]\d{3})'", path.read_text()))
    return found


def test_every_sqlstate_the_ledger_raises_is_mapped():
    raised = _sqlstates_raised_in("sql") - {"WR500"}  # WR500: append-only guard, a bug if ever seen
    assert raised <= set(LEDGER_ERRORS), raised - set(LEDGER_ERRORS)
    # WC409 transaction_not_cancelable arrives with canceling scheduled deposits.
    not_yet_raised = {"WC409"}
    assert set(LEDGER_ERRORS) - not_yet_raised <= raised, set(LEDGER_ERRORS) - raised


def test_each_sqlstate_ends_with_its_http_status():
    for sqlstate, (status, code) in LEDGER_ERRORS.items():
        assert sqlstate[-3:] == str(status), (sqlstate, status)
        assert code in TITLES


def test_the_documented_table_is_the_mapping():
    table = (ROOT / "docs/errors.md").read_text()
    rows = re.findall(r"^\| `(W[A-Z]\d{3})` \| `(\w+)` \| (\d{3}) \|", table, re.M)
    documented = {sqlstate: (int(status), code) for sqlstate, code, status in rows}
    documented.pop("WR500")
    assert documented == LEDGER_ERRORS


def test_every_code_the_api_answers_is_documented():
    table = (ROOT / "docs/errors.md").read_text()
    ledger_codes = re.findall(r"^\| `W[A-Z]\d{3}` \| `(\w+)` \| \d{3} \|", table, re.M)
    api_codes = re.findall(r"^\| `(\w+)` \| \d{3} \|", table, re.M)
    assert set(ledger_codes) | set(api_codes) == set(TITLES)
