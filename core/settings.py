"""The one settings object of every process (API, worker, CLI).

It is read from the environment once, by load_settings(), normalised there, and passed
down; no other module reads the environment. An empty variable counts as unset, so
`set -a; . ./.env.sample` works. A bad value stops start-up with a message naming the
variable. .env.sample lists every setting.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import msgspec

JWT_ALGORITHMS = ("HS256", "RS256", "ES256")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_DATA_DIR = ".wallet"
MIN_JWT_SECRET_LENGTH = 32


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names it."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    # Where the data is. database_url is a postgresql:// URL, or None: an embedded server
    # under data_dir (core.database.database_url starts it).
    database_url: str | None
    data_dir: Path
    log_level: str

    # Tokens.
    jwt_algorithm: str
    jwt_secret: str | None
    jwt_public_key: str | None
    jwt_audience: str | None
    jwt_issuer: str | None
    jwt_leeway_seconds: int

    # The API.
    pool_min_size: int
    pool_max_size: int
    pool_acquire_timeout_seconds: float
    statement_cache_size: int
    max_body_bytes: int
    http_keep_alive_seconds: int
    verify_timeout_seconds: int
    # Where each `wallet serve` process keeps its metrics for /metrics to sum (prometheus
    # client's PROMETHEUS_MULTIPROC_DIR); None: one process, in memory.
    metrics_dir: Path | None

    # The worker.
    worker_concurrency: int
    worker_poll_seconds: float
    worker_listen_notify: bool
    settle_max_retries: int
    settle_retry_base_seconds: int
    settle_sweep_limit: int
    expiry_sweep_limit: int
    reconcile_grace_seconds: int
    stalled_worker_seconds: int
    job_retention_hours: int

    @property
    def jwt_verification_key(self) -> str:
        """The key tokens are checked with; SettingsError, naming the variable, when unset."""
        if self.jwt_algorithm == "HS256":
            if self.jwt_secret is None:
                raise SettingsError("WALLET_JWT_SECRET must be set (HS256 tokens are verified with it)")
            return self.jwt_secret
        if self.jwt_public_key is None:
            raise SettingsError(
                f"WALLET_JWT_PUBLIC_KEY must be set for WALLET_JWT_ALGORITHM={self.jwt_algorithm}"
            )
        return self.jwt_public_key


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from environ (default: the process environment)."""
    read = _Reader(os.environ if environ is None else environ)
    algorithm = read.choice("WALLET_JWT_ALGORITHM", "HS256", JWT_ALGORITHMS)
    secret = read.text("WALLET_JWT_SECRET")
    if secret is not None and len(secret) < MIN_JWT_SECRET_LENGTH:
        raise SettingsError(f"WALLET_JWT_SECRET must be at least {MIN_JWT_SECRET_LENGTH} characters")
    pool_min = read.integer("WALLET_POOL_MIN_SIZE", 2, 0, 1000)
    pool_max = read.integer("WALLET_POOL_MAX_SIZE", 10, 1, 1000)
    if pool_min > pool_max:
        raise SettingsError("WALLET_POOL_MIN_SIZE must not be above WALLET_POOL_MAX_SIZE")
    metrics_dir = read.text("PROMETHEUS_MULTIPROC_DIR")
    return Settings(
        database_url=read.database_url("DATABASE_URL"),
        data_dir=Path(read.text("WALLET_DATA_DIR") or DEFAULT_DATA_DIR),
        log_level=read.choice("WALLET_LOG_LEVEL", "INFO", LOG_LEVELS),
        jwt_algorithm=algorithm,
        jwt_secret=secret,
        jwt_public_key=read.public_key("WALLET_JWT_PUBLIC_KEY"),
        jwt_audience=read.text("WALLET_JWT_AUDIENCE"),
        jwt_issuer=read.text("WALLET_JWT_ISSUER"),
        jwt_leeway_seconds=read.integer("WALLET_JWT_LEEWAY_SECONDS", 30, 0, 300),
        pool_min_size=pool_min,
        pool_max_size=pool_max,
        pool_acquire_timeout_seconds=read.integer("WALLET_POOL_ACQUIRE_TIMEOUT_SECONDS", 5, 1, 120),
        statement_cache_size=read.integer("WALLET_STATEMENT_CACHE_SIZE", 100, 0, 10000),
        max_body_bytes=read.integer("WALLET_MAX_BODY_BYTES", 65536, 1024, 10 * 1024 * 1024),
        # Longer than the idle timeout of the clients and proxies in front (httpx 5 s, load
        # balancers 60 s): the side that closes an idle connection first must be the client, or a
        # request sent as the server closes is lost to a connection reset.
        http_keep_alive_seconds=read.integer("WALLET_HTTP_KEEP_ALIVE_SECONDS", 75, 1, 3600),
        # GET /v1/ledger/verify reads the whole ledger; past this it stops and answers 503.
        verify_timeout_seconds=read.integer("WALLET_VERIFY_TIMEOUT_SECONDS", 60, 1, 3600),
        metrics_dir=None if metrics_dir is None else Path(metrics_dir),
        worker_concurrency=read.integer("WALLET_WORKER_CONCURRENCY", 16, 1, 256),
        worker_poll_seconds=read.integer("WALLET_WORKER_POLL_MILLISECONDS", 200, 10, 60000) / 1000,
        worker_listen_notify=read.boolean("WALLET_WORKER_LISTEN_NOTIFY", True),
        settle_max_retries=read.integer("WALLET_SETTLE_MAX_RETRIES", 8, 0, 100),
        settle_retry_base_seconds=read.integer("WALLET_SETTLE_RETRY_BASE_SECONDS", 2, 1, 3600),
        settle_sweep_limit=read.integer("WALLET_SETTLE_SWEEP_LIMIT", 50, 0, 1000),
        expiry_sweep_limit=read.integer("WALLET_EXPIRY_SWEEP_LIMIT", 50, 0, 1000),
        reconcile_grace_seconds=read.integer("WALLET_RECONCILE_GRACE_SECONDS", 30, 1, 86400),
        # A worker without a heartbeat for this long is dead, and its running jobs are retried;
        # workers beat three times in this window (jobs.app.run_worker).
        stalled_worker_seconds=read.integer("WALLET_STALLED_WORKER_SECONDS", 30, 1, 3600),
        job_retention_hours=read.integer("WALLET_JOB_RETENTION_HOURS", 72, 1, 24 * 365),
    )


def export_to_children(**variables: str) -> None:
    """Set variables in this process's environment, for the processes it starts (uvicorn's
    workers read their settings again); the one place that writes the environment."""
    os.environ.update(variables)


def child_environment(**variables: str) -> dict[str, str]:
    """This process's environment with variables replaced: for a subprocess it starts."""
    return {**os.environ, **variables}


class _Reader:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a whole number, not {raw!r}") from None
        if not low <= value <= high:
            raise SettingsError(f"{name} must be between {low} and {high}, not {value}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = (self.text(name) or default).upper()
        if value not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.text(name)
        if value is None:
            return default
        if value.lower() not in {"true", "false"}:
            raise SettingsError(f"{name} must be true or false, not {value!r}")
        return value.lower() == "true"

    def public_key(self, name: str) -> str | None:
        value = self.text(name)
        if value is None or not value.startswith("@"):
            return value
        path = Path(value[1:])
        try:
            return path.read_text()
        except OSError as error:
            raise SettingsError(f"{name}: cannot read {path}: {error}") from None

    def database_url(self, name: str) -> str | None:
        url = self.text(name)
        return None if url is None else normalize_database_url(url, name)


def normalize_database_url(url: str, name: str = "DATABASE_URL") -> str:
    """postgres:// and postgresql+driver:// become postgresql://, which every driver here
    (asyncpg, psycopg, and yoyo once core.migrate names its driver) reads."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"} and not parts.scheme.startswith("postgresql+"):
        raise SettingsError(f"{name} must be a postgresql:// URL, not {parts.scheme}://")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
    except ValueError:
        raise SettingsError(f"{name} names a port that is not a number from 1 to 65535") from None
    return urlunsplit(("postgresql", *parts[1:]))
