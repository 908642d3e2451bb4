"""The rules of the contract that JSON Schema cannot state, for the schemathesis runs.

Schemathesis sends requests its generator believes valid (positive data) and reports any that
the server refuses. The served document says all that JSON Schema can (no unknown property,
bounds, patterns, formats), but a few rules of SPEC cannot be written in it:

- an integer is a JSON integer (SPEC 1): under JSON Schema 2020-12, which OpenAPI 3.1 uses,
  `10.0` *is* the integer 10, and schemathesis sends it as one;
- a date-time's UTC value lies in the years 1 to 9999 (`9999-12-31T23:59:59-14:00` does not);
- `available_at` is at most 366 days ahead (SPEC 5); a hold's `expires_at` is in the future and
  at most 366 days ahead (issue 12);
- `since` is not after `until`;
- a rule's `min_fee` is not above its `max_fee`;
- `metadata` is at most 4096 bytes of JSON, as PostgreSQL prints jsonb.

A positive case that breaks one of them and is answered `400 invalid_request` is the contract
at work, not a finding: `excused` drops exactly those, and nothing else. Domain refusals (422:
insufficient funds, same wallet, ...) are expected answers to valid data, configured in
schemathesis.toml.

The pytest runs import this module; the CLI runs load it through SCHEMATHESIS_HOOKS, where
the `filter_failure` hook below applies it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import schemathesis

INTEGER_FIELDS = ("amount", "rate_bps", "fixed", "min_fee", "max_fee")
MAX_SCHEDULE_AHEAD = timedelta(days=366)
MAX_METADATA_BYTES = 4096


def broken_rule(case: Any) -> str | None:
    """The contract rule beyond JSON Schema that this request breaks, if any."""
    body = case.body if isinstance(case.body, dict) else {}
    query = case.query if isinstance(case.query, dict) else {}
    for field in INTEGER_FIELDS:
        if isinstance(body.get(field), float):
            return f"{field} is {body[field]!r}, not a JSON integer"
    if isinstance(body.get("available_at"), str):
        moment = _utc_instant(body["available_at"])
        if moment is None:
            return "available_at leaves the years 1 to 9999 in UTC"
        if moment > datetime.now(UTC) + MAX_SCHEDULE_AHEAD:
            return "available_at is more than 366 days ahead"
    if isinstance(body.get("expires_at"), str):
        moment = _utc_instant(body["expires_at"])
        if moment is None:
            return "expires_at leaves the years 1 to 9999 in UTC"
        if not datetime.now(UTC) < moment <= datetime.now(UTC) + MAX_SCHEDULE_AHEAD:
            return "expires_at is not in the future, or more than 366 days ahead"
    bounds = {name: _utc_instant(value) for name, value in query.items() if name in ("since", "until")}
    if any(moment is None for moment in bounds.values()):
        return "since or until leaves the years 1 to 9999 in UTC"
    if len(bounds) == 2 and bounds["since"] > bounds["until"]:
        return "since is after until"
    fees = (body.get("min_fee"), body.get("max_fee"))
    if all(isinstance(fee, int) for fee in fees) and fees[0] > fees[1]:
        return "min_fee is above max_fee"
    if isinstance(body.get("metadata"), dict) and _jsonb_bytes(body["metadata"]) > MAX_METADATA_BYTES:
        return "metadata is over 4096 bytes"
    return None


def excused(failure: Exception, case: Any, response: Any) -> bool:
    """Whether a failure is the contract refusing a request for a rule JSON Schema cannot state."""
    if type(failure).__name__ != "RejectedPositiveData" or response.status_code != 400:
        return False
    try:
        code = json.loads(response.content).get("code")
    except (ValueError, AttributeError):
        return False
    return code == "invalid_request" and broken_rule(case) is not None


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure but the ones `excused` names."""
    return not excused(failure, case, response)


def _utc_instant(text: Any) -> datetime | None:
    """The UTC value of an RFC 3339 date-time, or None when it leaves the years 1 to 9999."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.upper().replace("Z", "+00:00")).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _jsonb_bytes(value: Any) -> int:
    """The length in bytes of value as PostgreSQL prints jsonb: `", "` and `": "` between items,
    numbers in plain notation (`1e3` is `1000`)."""

    def text(item: Any) -> str:
        if isinstance(item, dict):
            return "{" + ", ".join(f"{text(key)}: {text(member)}" for key, member in item.items()) + "}"
        if isinstance(item, list):
            return "[" + ", ".join(text(member) for member in item) + "]"
        if isinstance(item, float):
            return format(Decimal(repr(item)), "f")
        return json.dumps(item, ensure_ascii=False)

    return len(text(value).encode())
