"""Bearer JWT authentication and scope authorization (SPEC 3): one guard for every route.

The algorithm comes from configuration, never from the token: a token signed with any
other algorithm (`none` included) is refused. `exp` and `sub` are required, `iat` is
optional, `aud` and `iss` are checked when configured.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jwt
import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from core.settings import Settings

SCOPES = (
    "wallets:read",
    "wallets:create",
    "wallets:admin",
    "deposits:write",
    "withdrawals:write",
    "transfers:write",
    "holds:write",
    "commissions:read",
    "commissions:write",
    "ledger:audit",
)
MAX_TOKEN_BYTES = 8192
MAX_VERIFIED_TOKENS = 10_000


class Principal(msgspec.Struct, frozen=True):
    sub: str
    scopes: frozenset[str]
    owner_id: str | None  # None: a service token, not limited to one owner's wallets


class TokenVerifier:
    """Verifies bearer tokens, and remembers the last MAX_VERIFIED_TOKENS it accepted until they
    expire: a client sends the same token with every request, and checking its signature again
    was a sixth of the API's CPU per request. Nothing a token says can change before its `exp`
    (an `nbf` or `iat` once passed stays passed; `aud` and `iss` are settings).

    clock gives the time in seconds since the epoch (tests pass one they move). A token must
    be in date both by it and by PyJWT's own check, which reads the system clock: with the
    default clock, time.time, the two are the same check."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self._key = settings.jwt_verification_key
        self._algorithm = settings.jwt_algorithm
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway_seconds
        self._clock = clock
        self._verified: dict[str, tuple[Principal, float]] = {}  # token -> (principal, accepted until)

    def verify(self, token: str) -> Principal:
        known = self._verified.get(token)
        if known is not None:
            principal, accepted_until = known
            if self._clock() < accepted_until:  # as PyJWT: expired from exp + leeway on
                return principal
            del self._verified[token]
        principal, expires_at = self._decode(token)
        if len(self._verified) >= MAX_VERIFIED_TOKENS:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[token] = (principal, expires_at + self._leeway)
        return principal

    def _decode(self, token: str) -> tuple[Principal, float]:
        if len(token) > MAX_TOKEN_BYTES:
            raise NotAuthorizedException("the bearer token is too long")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise NotAuthorizedException("the token has expired") from None
        except jwt.InvalidTokenError:
            raise NotAuthorizedException("the token is not valid") from None
        # PyJWT's time checks again, as PyJWT makes them but by this verifier's clock (PyJWT
        # has checked that each is an integer): expired from exp + leeway on, not yet valid
        # before nbf - leeway or iat - leeway.
        now, expires_at = self._clock(), int(claims["exp"])
        if expires_at <= now - self._leeway:
            raise NotAuthorizedException("the token has expired")
        if any(int(claims[name]) > now + self._leeway for name in ("nbf", "iat") if name in claims):
            raise NotAuthorizedException("the token is not valid")
        sub, scope, owner_id = claims.get("sub"), claims.get("scope", ""), claims.get("owner_id")
        if not _is_identifier(sub):
            raise NotAuthorizedException("the token's sub must be 1 to 255 characters of valid Unicode")
        if not isinstance(scope, str):
            raise NotAuthorizedException("the token's scope must be a space-separated string")
        if owner_id is not None and not _is_identifier(owner_id):
            raise NotAuthorizedException("the token's owner_id must be 1 to 255 characters of valid Unicode")
        # RFC 6749 3.3: scopes are separated by the space character only; a tab or a newline
        # is part of a (then unknown) scope.
        scopes = frozenset(name for name in scope.split(" ") if name)
        return Principal(sub=sub, scopes=scopes, owner_id=owner_id), float(expires_at)


def _is_identifier(value: object) -> bool:
    """A claim the ledger can store as text: 1 to 255 characters of valid Unicode (JSON may
    carry a lone surrogate such as \\ud800, which has no UTF-8 form) without NUL."""
    if not isinstance(value, str) or not 1 <= len(value) <= 255 or "\x00" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def bearer_token(connection: ASGIConnection) -> str:
    header = connection.headers.get("authorization")
    if not header:
        raise NotAuthorizedException("an Authorization: Bearer token is required")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthorizedException("the Authorization header must be 'Bearer <token>'")
    return token.strip()


async def authorize(connection: ASGIConnection, route_handler: BaseRouteHandler) -> None:
    """Guard: authenticate the bearer token and require the route's scope (opt['scope'])."""
    # async although it does no I/O: Litestar would run a plain def in a worker thread.
    if connection.scope["method"] == "OPTIONS":
        # Litestar's own answer (204, Allow): it names the methods and reads nothing, and a
        # CORS preflight carries no credentials.
        return
    verifier: TokenVerifier = connection.app.state.token_verifier
    principal = verifier.verify(bearer_token(connection))
    required = route_handler.opt["scope"]
    if required not in principal.scopes:
        raise PermissionDeniedException(f"this needs the {required} scope")
    connection.scope["user"] = principal


def mint_token(
    secret: str,
    *,
    sub: str,
    scopes: list[str],
    owner_id: str | None = None,
    ttl_seconds: int = 3600,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """An HS256 token for local use (`wallet token`) and tests."""
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": sub,
        "scope": " ".join(scopes),
        "iat": now,
        "exp": now + ttl_seconds,
    }
    if owner_id is not None:
        claims["owner_id"] = owner_id
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")
