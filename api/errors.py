"""The one mapping from failures to application/problem+json (SPEC 7).

Ledger failures arrive as SQLSTATEs of our own (docs/errors.md); this module never reads
an error message to decide anything. Nothing internal (SQL, traceback, driver names)
reaches a client: unknown failures are logged and answered with a bare 500.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

logger = logging.getLogger("wallet.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = 1


class Problem(msgspec.Struct, frozen=True):
    type: str
    title: str
    status: int
    detail: str
    code: str


# SQLSTATE -> (HTTP status, code). The same table is docs/errors.md.
LEDGER_ERRORS: dict[str, tuple[int, str]] = {
    "WI400": (400, "invalid_request"),
    "WN404": (404, "not_found"),
    "WS409": (409, "wallet_not_active"),
    "WE409": (409, "wallet_not_empty"),
    "WC409": (409, "transaction_not_cancelable"),
    "WK409": (409, "idempotency_key_reused"),
    "WF422": (422, "insufficient_funds"),
    "WM422": (422, "currency_mismatch"),
    "WW422": (422, "same_wallet"),
    "WB422": (422, "amount_below_fee"),
    "WL422": (422, "balance_limit_exceeded"),
    "WT500": (500, "isolation_level_unsupported"),
}

TITLES = {
    "invalid_request": "The request is not valid",
    "unauthenticated": "Authentication is required",
    "forbidden": "The token does not allow this",
    "not_found": "Not found",
    "method_not_allowed": "Method not allowed",
    "wallet_not_active": "The wallet is not active",
    "wallet_not_empty": "The wallet is not empty",
    "transaction_not_cancelable": "The transaction cannot be canceled",
    "idempotency_key_reused": "The idempotency key was used for another request",
    "payload_too_large": "The request body is too large",
    "insufficient_funds": "Insufficient funds",
    "currency_mismatch": "The currencies differ",
    "same_wallet": "Source and destination are the same wallet",
    "amount_below_fee": "The amount does not cover the fee",
    "balance_limit_exceeded": "The wallet would exceed its maximum balance",
    "unavailable": "The service is unavailable; retry shortly",
    "verify_timeout": "The ledger check did not finish in its time limit",
    "isolation_level_unsupported": "A ledger function was called under an unsupported isolation level",
    "internal": "Internal error",
}

# PostgreSQL refusing a value the client sent: a NUL character in text or JSON.
CLIENT_INPUT_SQLSTATES = {"22021", "22P05"}

# Failures that a retry can fix: the database is away, or a transaction lost a race.
RETRYABLE_SQLSTATES = {
    "40001",
    "40P01",
    "57P01",
    "57P02",
    "57P03",
    "53300",
    "08000",
    "08003",
    "08006",
}
UNAVAILABLE_EXCEPTIONS = (
    OSError,
    # asyncpg's state machine after the server dropped a connection mid-operation.
    asyncpg.exceptions.InternalClientError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
)


class ApiError(Exception):
    """A client-facing failure raised by the API itself (not by the ledger). A 503 says when to
    retry (Retry-After, in seconds)."""

    def __init__(
        self, status: int, code: str, detail: str, retry_after_seconds: int = RETRY_AFTER_SECONDS
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.retry_after_seconds = retry_after_seconds


PROBLEM_CODES_BY_STATUS = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    409: "wallet_not_active, wallet_not_empty, transaction_not_cancelable, idempotency_key_reused",
    413: "payload_too_large",
    422: "insufficient_funds, currency_mismatch, same_wallet, amount_below_fee, balance_limit_exceeded",
    503: "unavailable (with Retry-After)",
}


def problem_responses(*statuses: int, codes: dict[int, str] | None = None) -> dict[int, ResponseSpec]:
    """OpenAPI responses for a handler: the given statuses plus 400, 401, 403 and 503, which any
    authenticated route can answer. `codes` narrows the codes listed for a status."""
    codes = codes or {}
    return {
        status: ResponseSpec(
            Problem,
            description="application/problem+json; code: "
            + codes.get(status, PROBLEM_CODES_BY_STATUS[status]),
            media_type=PROBLEM_MEDIA_TYPE,
            generate_examples=False,
        )
        for status in sorted({400, 401, 403, 503, *statuses})
    }


def problem(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    body = Problem(
        type=f"urn:wallet:error:{code}", title=TITLES[code], status=status, detail=detail, code=code
    )
    return Response(
        content=msgspec.json.encode(body),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def unavailable() -> Response:
    return problem(
        503,
        "unavailable",
        "the database cannot be reached; retry shortly",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def handle_api_error(_: Request, error: ApiError) -> Response:
    headers = {"Retry-After": str(error.retry_after_seconds)} if error.status == 503 else None
    return problem(error.status, error.code, error.detail, headers=headers)


def handle_postgres_error(request: Request, error: asyncpg.PostgresError) -> Response:
    mapped = LEDGER_ERRORS.get(error.sqlstate or "")
    if mapped is not None:
        status, code = mapped
        return problem(status, code, error.message)
    if error.sqlstate in CLIENT_INPUT_SQLSTATES:
        return problem(400, "invalid_request", "text and metadata must not contain NUL characters")
    if error.sqlstate in RETRYABLE_SQLSTATES:
        logger.warning("retryable database error %s on %s", error.sqlstate, request.url.path)
        return unavailable()
    return handle_unexpected(request, error)


def handle_unavailable(request: Request, error: Exception) -> Response:
    logger.warning("database unavailable on %s: %s", request.url.path, type(error).__name__)
    return unavailable()


def handle_validation(_: Request, error: ValidationException) -> Response:
    return problem(400, "invalid_request", _validation_detail(error))


def handle_http_exception(_: Request, error: HTTPException) -> Response:
    status = error.status_code
    if isinstance(error, NotAuthorizedException) or status == 401:
        return problem(401, "unauthenticated", error.detail, headers={"WWW-Authenticate": "Bearer"})
    if isinstance(error, PermissionDeniedException) or status == 403:
        return problem(403, "forbidden", error.detail)
    if status == 404:
        return problem(404, "not_found", "no such resource")
    if status == 405:
        # RFC 9110 15.5.6: a 405 lists the methods the resource supports (Litestar's router
        # names them in the exception it raises).
        allow = {name.lower(): value for name, value in (error.headers or {}).items()}.get("allow")
        headers = {"Allow": allow} if allow else None
        return problem(405, "method_not_allowed", "method not allowed on this resource", headers=headers)
    if status == 413:
        return problem(413, "payload_too_large", "the request body is too large")
    if status < 500:
        return problem(400, "invalid_request", error.detail)
    return problem(status, "internal", "internal error")


def handle_unexpected(request: Request, error: Exception) -> Response:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return problem(HTTP_500_INTERNAL_SERVER_ERROR, "internal", "internal error")


def _validation_detail(error: ValidationException) -> str:
    extra = error.extra
    if isinstance(extra, list) and extra:
        first = extra[0]
        if isinstance(first, dict) and first.get("message"):
            where = first.get("key")
            return f"{first['message']}" + (f" ({where})" if where else "")
    return error.detail or "invalid request"


EXCEPTION_HANDLERS = {
    ApiError: handle_api_error,
    asyncpg.PostgresError: handle_postgres_error,
    ValidationException: handle_validation,
    HTTPException: handle_http_exception,
    **{exception: handle_unavailable for exception in UNAVAILABLE_EXCEPTIONS},
    Exception: handle_unexpected,
}
