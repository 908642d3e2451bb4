"""The database: where it is (DATABASE_URL, or an embedded PostgreSQL for local use) and the
asyncpg pool every process calls the ledger through."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import msgspec

from core.settings import Settings


class DatabaseNotConfigured(RuntimeError):
    pass


class DatabaseUnreachable(RuntimeError):
    """The database DATABASE_URL names does not answer, or refuses the login; str() is one line
    naming the setting, the host, port, database and user, never the password."""

    def __init__(self, url: str, reason: object) -> None:
        super().__init__(
            f"cannot reach the database of DATABASE_URL ({describe(url)}): {_one_line(reason, url)}"
        )


REACH_TIMEOUT_SECONDS = 5


def check_reachable(url: str, timeout_seconds: int = REACH_TIMEOUT_SECONDS) -> None:
    """Log in once and leave; DatabaseUnreachable when that fails."""
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=timeout_seconds, autocommit=True).close()
    except (psycopg.Error, OSError) as error:
        raise DatabaseUnreachable(url, error) from None


def describe(url: str) -> str:
    """Where a URL points, without its password: host, port, database, user."""
    parts = urlsplit(url)
    host = parts.hostname or "the local socket"
    port = parts.port
    database = parts.path.lstrip("/") or "(default)"
    return f"host {host}, port {port or 5432}, database {database}, user {parts.username or '(default)'}"


def _one_line(reason: object, url: str) -> str:
    text = " ".join(str(reason).split()) or type(reason).__name__
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text


def database_url(settings: Settings) -> str:
    """DATABASE_URL, or the URL of an embedded server under WALLET_DATA_DIR (started if needed)."""
    return settings.database_url or start_embedded(settings.data_dir)


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


def create_pool(
    settings: Settings, url: str, *, min_size: int | None = None, max_size: int | None = None
) -> asyncpg.Pool:
    """The asyncpg pool of a process (use it as `async with`): jsonb as msgspec JSON,
    timestamptz exact, no per-release reset round trip."""
    return asyncpg.create_pool(
        url,
        min_size=settings.pool_min_size if min_size is None else min_size,
        max_size=settings.pool_max_size if max_size is None else max_size,
        timeout=settings.pool_acquire_timeout_seconds,
        statement_cache_size=settings.statement_cache_size,
        init=init_connection,
        reset=_nothing_to_reset,
    )


# timestamptz on the wire: microseconds since this instant (PostgreSQL's epoch).
POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)
POSTGRES_INFINITY, POSTGRES_MINUS_INFINITY = 2**63 - 1, -(2**63)


def _encode_timestamptz(moment: datetime) -> tuple[int]:
    return ((moment - POSTGRES_EPOCH) // ONE_MICROSECOND,)


def _decode_timestamptz(value: tuple[int]) -> datetime:
    (microseconds,) = value
    if microseconds == POSTGRES_INFINITY:  # no column of ours holds one; never a naive value
        return datetime.max.replace(tzinfo=UTC)
    if microseconds == POSTGRES_MINUS_INFINITY:
        return datetime.min.replace(tzinfo=UTC)
    return POSTGRES_EPOCH + microseconds * ONE_MICROSECOND


async def init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda value: msgspec.json.encode(value).decode(),
        decoder=msgspec.json.decode,
    )
    # asyncpg's own codec sends datetime.min and datetime.max as -infinity and infinity, so
    # `0001-01-01T00:00:00Z`, a valid past instant, would be stored as -infinity; this one
    # sends every instant as itself (and reads without a naive value).
    await connection.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        encoder=_encode_timestamptz,
        decoder=_decode_timestamptz,
        format="tuple",
    )


async def _nothing_to_reset(connection: asyncpg.Connection) -> None:
    """A released connection holds no session state to undo: handlers make one function call
    each (no SET, LISTEN, advisory lock or cursor; the ledger check's SET LOCAL ends with its
    transaction), and asyncpg itself still rolls back an open transaction. Its default reset
    would cost a round trip per request."""
