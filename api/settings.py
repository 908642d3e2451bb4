"""One settings object, read once from the environment; a bad value stops start-up with
a message naming the setting. .env.sample lists every setting."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from api.database import DEFAULT_DATA_DIR

JWT_ALGORITHMS = ("HS256", "RS256", "ES256")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names it."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str | None
    data_dir: Path
    jwt_algorithm: str
    jwt_secret: str | None
    jwt_public_key: str | None
    jwt_audience: str | None
    jwt_issuer: str | None
    jwt_leeway_seconds: int
    pool_min_size: int
    pool_max_size: int
    pool_acquire_timeout_seconds: float
    statement_cache_size: int
    max_body_bytes: int
    http_keep_alive_seconds: int
    verify_timeout_seconds: int
    log_level: str

    @property
    def jwt_verification_key(self) -> str:
        return self.jwt_secret if self.jwt_algorithm == "HS256" else self.jwt_public_key


def _text(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _int(name: str, default: int, low: int, high: int) -> int:
    raw = _text(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, not {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, not {value}")
    return value


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (_text(name) or default).upper()
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def load_settings() -> Settings:
    algorithm = _choice("WALLET_JWT_ALGORITHM", "HS256", JWT_ALGORITHMS)
    secret = _text("WALLET_JWT_SECRET")
    public_key = _text("WALLET_JWT_PUBLIC_KEY")
    if public_key and public_key.startswith("@"):
        key_path = Path(public_key[1:])
        try:
            public_key = key_path.read_text()
        except OSError as error:
            raise SettingsError(f"WALLET_JWT_PUBLIC_KEY: cannot read {key_path}: {error}") from None
    if algorithm == "HS256":
        if secret is None:
            raise SettingsError("WALLET_JWT_SECRET must be set (HS256 tokens are verified with it)")
        if len(secret) < 32:
            raise SettingsError("WALLET_JWT_SECRET must be at least 32 characters")
    elif public_key is None:
        raise SettingsError(f"WALLET_JWT_PUBLIC_KEY must be set for WALLET_JWT_ALGORITHM={algorithm}")

    pool_min = _int("WALLET_POOL_MIN_SIZE", 2, 0, 1000)
    pool_max = _int("WALLET_POOL_MAX_SIZE", 10, 1, 1000)
    if pool_min > pool_max:
        raise SettingsError("WALLET_POOL_MIN_SIZE must not be above WALLET_POOL_MAX_SIZE")
    return Settings(
        database_url=_text("DATABASE_URL"),
        data_dir=Path(_text("WALLET_DATA_DIR") or DEFAULT_DATA_DIR),
        jwt_algorithm=algorithm,
        jwt_secret=secret,
        jwt_public_key=public_key,
        jwt_audience=_text("WALLET_JWT_AUDIENCE"),
        jwt_issuer=_text("WALLET_JWT_ISSUER"),
        jwt_leeway_seconds=_int("WALLET_JWT_LEEWAY_SECONDS", 30, 0, 300),
        pool_min_size=pool_min,
        pool_max_size=pool_max,
        pool_acquire_timeout_seconds=_int("WALLET_POOL_ACQUIRE_TIMEOUT_SECONDS", 5, 1, 120),
        statement_cache_size=_int("WALLET_STATEMENT_CACHE_SIZE", 100, 0, 10000),
        max_body_bytes=_int("WALLET_MAX_BODY_BYTES", 65536, 1024, 10 * 1024 * 1024),
        # Longer than the idle timeout of the clients and proxies in front (httpx 5 s, load
        # balancers 60 s): the side that closes an idle connection first must be the client, or a
        # request sent as the server closes is lost to a connection reset.
        http_keep_alive_seconds=_int("WALLET_HTTP_KEEP_ALIVE_SECONDS", 75, 1, 3600),
        # GET /v1/ledger/verify reads the whole ledger; past this it stops and answers 503.
        verify_timeout_seconds=_int("WALLET_VERIFY_TIMEOUT_SECONDS", 60, 1, 3600),
        log_level=_choice("WALLET_LOG_LEVEL", "INFO", LOG_LEVELS),
    )


class WorkerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What `wallet worker` needs; no token settings."""

    concurrency: int
    poll_seconds: float
    listen_notify: bool
    settle_max_retries: int
    settle_retry_base_seconds: int
    settle_sweep_limit: int
    reconcile_grace_seconds: int
    job_retention_hours: int
    log_level: str


def load_worker_settings() -> WorkerSettings:
    return WorkerSettings(
        concurrency=_int("WALLET_WORKER_CONCURRENCY", 16, 1, 256),
        poll_seconds=_int("WALLET_WORKER_POLL_MILLISECONDS", 200, 10, 60000) / 1000,
        listen_notify=_choice("WALLET_WORKER_LISTEN_NOTIFY", "TRUE", ("TRUE", "FALSE")) == "TRUE",
        settle_max_retries=_int("WALLET_SETTLE_MAX_RETRIES", 8, 0, 100),
        settle_retry_base_seconds=_int("WALLET_SETTLE_RETRY_BASE_SECONDS", 2, 1, 3600),
        settle_sweep_limit=_int("WALLET_SETTLE_SWEEP_LIMIT", 50, 0, 1000),
        reconcile_grace_seconds=_int("WALLET_RECONCILE_GRACE_SECONDS", 30, 1, 86400),
        job_retention_hours=_int("WALLET_JOB_RETENTION_HOURS", 72, 1, 24 * 365),
        log_level=_choice("WALLET_LOG_LEVEL", "INFO", LOG_LEVELS),
    )
