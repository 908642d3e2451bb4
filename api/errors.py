"""The one mapping from failures to application/problem+json (SPEC 7).

Ledger failures arrive as SQLSTATEs of our own, mapped by the one error table (core/errors.py,
docs/errors.md); this module never reads an error message to decide anything. Nothing internal
(SQL, traceback, driver names) reaches a client: unknown failures are logged and answered with a
bare 500.
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

from core.errors import BY_CODE, BY_SQLSTATE, ErrorCode

logger = logging.getLogger("wallet.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = 1


class Problem(msgspec.Struct, frozen=True):
    type: str
    title: str
    status: int
    detail: str
    code: str


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


# Every authenticated operation can answer these.
COMMON_CODES = ("invalid_request", "unauthenticated", "forbidden", "unavailable")


def problem_responses(*codes: str) -> dict[int, ResponseSpec]:
    """OpenAPI responses for an operation: the codes it may answer besides COMMON_CODES, grouped
    by status, each with its meaning from the one error table (core.errors)."""
    by_status: dict[int, list[ErrorCode]] = {}
    for code in dict.fromkeys((*COMMON_CODES, *codes)):
        error = BY_CODE[code]
        by_status.setdefault(error.status, []).append(error)
    return {
        status: ResponseSpec(
            Problem,
            description="application/problem+json with one of these codes:\n\n"
            + "\n".join(f"- `{error.code}`: {error.meaning}" for error in errors),
            media_type=PROBLEM_MEDIA_TYPE,
            generate_examples=False,
        )
        for status, errors in sorted(by_status.items())
    }


def problem(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    body = Problem(
        type=f"urn:wallet:error:{code}", title=BY_CODE[code].title, status=status, detail=detail, code=code
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
    mapped = BY_SQLSTATE.get(error.sqlstate or "")
    if mapped is not None and mapped.code != "internal":
        return problem(mapped.status, mapped.code, error.message)
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
