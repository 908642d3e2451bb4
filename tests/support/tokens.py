"""Tokens for the servers the tests start: they all verify HS256 with JWT_SECRET."""

from __future__ import annotations

from collections.abc import Callable

from api.auth import SCOPES, mint_token

JWT_SECRET = "test-secret-" + "x" * 40

TokenFactory = Callable[..., str]


def make_token(
    *scopes: str,
    sub: str = "test-client",
    owner_id: str | None = None,
    ttl_seconds: int = 600,
    secret: str = JWT_SECRET,
) -> str:
    """A valid HS256 token; every scope when none is named; a service token (no owner_id)
    unless one is given."""
    return mint_token(
        secret, sub=sub, scopes=list(scopes or SCOPES), owner_id=owner_id, ttl_seconds=ttl_seconds
    )


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for token."""
    return {"Authorization": f"Bearer {token}"}
