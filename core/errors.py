"""The one error table: SQLSTATE -> code -> HTTP status -> meaning.

The ledger functions in sql/ raise failures with SQLSTATEs of our own: `W`, a letter that
names the error, and the HTTP status as the last three digits. The API maps the SQLSTATE
(never the message) to a problem+json code with this table; its OpenAPI document lists each
operation's codes with their meanings from it, and docs/errors.md is generated from it
(`python -m core.errors > docs/errors.md`; a test fails when they drift).
"""

from __future__ import annotations

import sys

import msgspec


class ErrorCode(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    status: int
    title: str  # the problem+json title
    meaning: str  # when a client gets it; the OpenAPI document and docs/errors.md say it
    # The SQLSTATE the ledger raises it with, or None: only the API itself gives it.
    sqlstate: str | None = None
    # The SQL side of it, for DBAs (docs/errors.md's ledger table).
    raised_when: str | None = None


ERRORS: tuple[ErrorCode, ...] = (
    ErrorCode(
        code="invalid_request",
        status=400,
        title="The request is not valid",
        meaning="the body is not strict JSON of the right shape (a string or float amount, unknown "
        "fields, NUL characters, nesting too deep), a malformed id, query parameter, cursor or "
        "`Idempotency-Key`, a date-time (`available_at`, `since`, `until`) without an offset or whose "
        "UTC value leaves the years 1 to 9999, or a value out of its bounds; fix the request, "
        "do not retry it",
        sqlstate="WI400",
        raised_when="an argument is out of its bounds (amount, reference, metadata, limit, key, rule values)",
    ),
    ErrorCode(
        code="unauthenticated",
        status=401,
        title="Authentication is required",
        meaning="no bearer token, or one that is malformed, badly signed, of another algorithm (`none` "
        "included), expired, lacking `sub`/`exp`, or whose `sub` or `owner_id` is not 1 to 255 "
        "characters of valid Unicode without NUL (with `WWW-Authenticate: Bearer`)",
    ),
    ErrorCode(
        code="forbidden",
        status=403,
        title="The token does not allow this",
        meaning="the token lacks the operation's scope, an owner's token opens a wallet for another "
        "owner, or an owner's token sets a commission rule (rules are set by service tokens only)",
    ),
    ErrorCode(
        code="not_found",
        status=404,
        title="Not found",
        meaning="the wallet, transaction or hold does not exist or belongs to another owner, or no such "
        "route",
        sqlstate="WN404",
        raised_when="the wallet, transaction or hold does not exist, or belongs to another owner",
    ),
    ErrorCode(
        code="method_not_allowed",
        status=405,
        title="Method not allowed",
        meaning="the route exists, the method does not (with `Allow` naming the methods it has)",
    ),
    ErrorCode(
        code="wallet_not_active",
        status=409,
        title="The wallet is not active",
        meaning="a wallet the operation moves money in or out of (or places a hold on, or captures a hold "
        "from or to) is frozen or closed, or a closed wallet is frozen or unfrozen",
        sqlstate="WS409",
        raised_when="a wallet in the movement, hold or capture is frozen or closed; or a closed wallet is "
        "frozen/unfrozen",
    ),
    ErrorCode(
        code="wallet_not_empty",
        status=409,
        title="The wallet is not empty",
        meaning="the wallet to close still has a balance, pending deposits or money held by active holds",
        sqlstate="WE409",
        raised_when="closing a wallet that still has a balance, pending deposits or held money",
    ),
    ErrorCode(
        code="transaction_not_cancelable",
        status=409,
        title="The transaction cannot be canceled",
        meaning="the transaction is not a scheduled deposit, or not any more (it settled, failed or "
        "was canceled)",
        sqlstate="WC409",
        raised_when="canceling a transaction that is not a scheduled deposit (any more)",
    ),
    ErrorCode(
        code="hold_not_active",
        status=409,
        title="The hold is not active",
        meaning="the hold was captured in full, voided or expired: it reserves nothing any more (a capture "
        "is refused too once the hold's `expires_at` has passed, before its expiry has run); nothing moved",
        sqlstate="WH409",
        raised_when="capturing or voiding a hold that is captured, voided or expired; capturing one past its "
        "expires_at",
    ),
    ErrorCode(
        code="idempotency_key_reused",
        status=409,
        title="The idempotency key was used for another request",
        meaning="the `Idempotency-Key` came with a different method, path or body before; use a new key "
        "for a new request",
        sqlstate="WK409",
        raised_when="an idempotency key comes back with a different request",
    ),
    ErrorCode(
        code="payload_too_large",
        status=413,
        title="The request body is too large",
        meaning="the body is larger than the server's limit (`WALLET_MAX_BODY_BYTES`, 64 KiB by default)",
    ),
    ErrorCode(
        code="insufficient_funds",
        status=422,
        title="Insufficient funds",
        meaning="the withdrawal or transfer, with its fee, would take the wallet's `available` below zero, "
        "a hold asks for more than `available`, or a capture's fee is more than `available` (the fee is "
        "never paid from the hold); nothing moved",
        sqlstate="WF422",
        raised_when="a withdrawal or transfer would take `available` (balance - held) below zero; a hold "
        "asks for more than `available`; a capture's fee is more than `available` before the capture",
    ),
    ErrorCode(
        code="amount_exceeds_hold",
        status=422,
        title="The amount exceeds what the hold reserves",
        meaning="the capture's amount is more than the hold's `remaining`; nothing moved",
        sqlstate="WA422",
        raised_when="capturing more than a hold's remaining",
    ),
    ErrorCode(
        code="currency_mismatch",
        status=422,
        title="The currencies differ",
        meaning="the two wallets of the transfer hold different currencies",
        sqlstate="WM422",
        raised_when="a transfer between wallets of different currencies",
    ),
    ErrorCode(
        code="same_wallet",
        status=422,
        title="Source and destination are the same wallet",
        meaning="the transfer's `from_wallet_id` and `to_wallet_id` are the same wallet",
        sqlstate="WW422",
        raised_when="a transfer to the wallet it comes from",
    ),
    ErrorCode(
        code="amount_below_fee",
        status=422,
        title="The amount does not cover the fee",
        meaning="the deposit's fee under the rule in force is not below its amount, so nothing would "
        "be credited",
        sqlstate="WB422",
        raised_when="a deposit whose fee is not below its amount",
    ),
    ErrorCode(
        code="balance_limit_exceeded",
        status=422,
        title="The wallet would exceed its maximum balance",
        meaning="the credit would take the wallet's balance (or its pending deposits) past 10^18 rials",
        sqlstate="WL422",
        raised_when="a credit would take a wallet above 10^18 rials (the bound that keeps every sum "
        "in `bigint`)",
    ),
    ErrorCode(
        code="isolation_level_unsupported",
        status=500,
        title="A ledger function was called under an unsupported isolation level",
        meaning="a ledger function that writes ran in a transaction that is not READ COMMITTED; only a "
        "caller other than the API can cause it",
        sqlstate="WT500",
        raised_when="a ledger function that writes was called in a transaction whose isolation level is "
        "not READ COMMITTED (the functions lock rows and re-check them; under REPEATABLE READ or "
        "SERIALIZABLE a concurrent update would fail them with a serialization error); only a caller "
        "other than the API can cause it",
    ),
    ErrorCode(
        code="unavailable",
        status=503,
        title="The service is unavailable; retry shortly",
        meaning="the database cannot be reached, the pool is exhausted, or a transaction lost a race that "
        "a retry resolves; retry after `Retry-After` seconds with the same `Idempotency-Key`",
    ),
    ErrorCode(
        code="verify_timeout",
        status=503,
        title="The ledger check did not finish in its time limit",
        meaning="`GET /v1/ledger/verify` did not finish within `WALLET_VERIFY_TIMEOUT_SECONDS` "
        "(with `Retry-After`: that many seconds)",
    ),
    ErrorCode(
        code="internal",
        status=500,
        title="Internal error",
        meaning="a bug; logged with its traceback, never described to the client",
        sqlstate="WR500",
        raised_when="a write to an append-only ledger fact (entries, posted transactions, rules, status "
        "changes, checkpoints); only a bug or a hand-made statement can cause it",
    ),
)

BY_CODE: dict[str, ErrorCode] = {error.code: error for error in ERRORS}
BY_SQLSTATE: dict[str, ErrorCode] = {error.sqlstate: error for error in ERRORS if error.sqlstate}


def markdown() -> str:
    """docs/errors.md."""
    ledger_rows = "\n".join(
        f"| `{error.sqlstate}` | `{error.code}` | {error.status} | {error.raised_when} |"
        for error in sorted(BY_SQLSTATE.values(), key=lambda error: (error.status, error.sqlstate))
    )
    api_rows = "\n".join(f"| `{error.code}` | {error.status} | {error.meaning} |" for error in ERRORS)
    return f"""# Errors: SQLSTATE → API code → HTTP status

<!-- Generated from core/errors.py by `make docs`; edit the table there. -->

Every error the API answers is `application/problem+json`:
`{{"type": "urn:wallet:error:<code>", "title", "status", "detail", "code"}}`. Clients decide on
`code`, never on `detail` (written for humans, and it may change).

## Raised by the ledger

The ledger functions in `sql/` raise failures with SQLSTATEs of our own: `W`, a letter that
names the error, and the HTTP status as the last three digits. The API maps the SQLSTATE
(never the message) to the code; tests assert the SQLSTATE or the code, never the wording.

| SQLSTATE | code | HTTP | raised when |
|---|---|---|---|
{ledger_rows}

Errors PostgreSQL itself raises are not client errors: the API answers 503 `unavailable`
(with `Retry-After`) for a lost connection, a deadlock or a serialization failure, and
500 `internal` for anything else, logged but never described to the client.

## Every code the API answers

| code | HTTP | meaning |
|---|---|---|
{api_rows}

`wallet_not_empty` and `balance_limit_exceeded` name what a payments API must refuse: money
stranded in a closed wallet, and a balance past what a 64-bit integer holds (every bound is named
and enforced). `isolation_level_unsupported` names a caller's mistake (the API always calls in
READ COMMITTED), so a DBA running a function by hand learns why, instead of meeting a
serialization failure under load.
"""


if __name__ == "__main__":
    sys.stdout.write(markdown())
