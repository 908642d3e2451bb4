"""The scope each operation needs, said once per handler for the guard and the document."""

from __future__ import annotations

from typing import Any

from api.auth import SCOPES


def requires(scope: str) -> dict[str, Any]:
    """A handler's keywords: the scope the auth guard checks (opt) and the security requirement
    the OpenAPI document shows for it (bearer, with that scope)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")
    return {"opt": {"scope": scope}, "security": [{"bearer": [scope]}]}
