"""Where the database is: DATABASE_URL, or an embedded PostgreSQL for local use."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

DEFAULT_DATA_DIR = ".wallet"


class DatabaseNotConfigured(RuntimeError):
    pass


def database_url() -> str:
    """DATABASE_URL, or the URL of an embedded server under WALLET_DATA_DIR (started if needed)."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        return normalize_url(url)
    return start_embedded(Path(os.environ.get("WALLET_DATA_DIR") or DEFAULT_DATA_DIR))


def start_embedded(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL in data_dir/pgdata; it stops when its last user exits."""
    try:
        with warnings.catch_warnings():
            # Its lock file falls back to /tmp/runtime-<uid> without a login session; fine.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            import pgserver
    except ImportError as error:  # pragma: no cover - depends on the install
        raise DatabaseNotConfigured(
            "DATABASE_URL is not set and the embedded PostgreSQL is not installed "
            "(pip install 'wallet[embedded]'), so there is no database to use"
        ) from error
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir / "pgdata", cleanup_mode="stop")
    return server.get_uri()


def normalize_url(url: str) -> str:
    """postgres:// and postgresql+driver:// become postgresql://, which every driver here reads."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"} and not parts.scheme.startswith("postgresql+"):
        raise DatabaseNotConfigured(f"DATABASE_URL must be a postgresql:// URL, not {parts.scheme}://")
    return urlunsplit(("postgresql", *parts[1:]))


def with_database(url: str, database: str) -> str:
    """The same server, another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def with_user(url: str, user: str, password: str | None = None) -> str:
    """The same server and database, another login."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    credentials = quote(user, safe="") + ("" if password is None else ":" + quote(password, safe=""))
    return urlunsplit((parts.scheme, f"{credentials}@{host}", parts.path, parts.query, parts.fragment))
