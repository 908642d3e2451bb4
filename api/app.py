"""The Litestar application: plumbing only. Handlers live in one module per resource."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import msgspec
from litestar import Litestar, Router
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController

from api.auth import TokenVerifier, authorize
from api.database import database_url
from api.errors import EXCEPTION_HANDLERS
from api.logs import RequestLog, configure_logging
from api.metrics import report_pool
from api.movements import MovementController
from api.plumbing import provide_caller, provide_write, strict_body
from api.probes import healthz, readyz
from api.settings import Settings, load_settings
from api.transactions import CommissionController, LedgerController, TransactionController
from api.wallets import WalletController

API_CONTROLLERS = [
    WalletController,
    MovementController,
    TransactionController,
    CommissionController,
    LedgerController,
]


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda value: msgspec.json.encode(value).decode(),
        decoder=msgspec.json.decode,
    )


async def _nothing_to_reset(connection: asyncpg.Connection) -> None:
    """A released connection holds no session state to undo: handlers make one function call
    each (no SET, LISTEN, advisory lock or cursor), and asyncpg itself still rolls back an
    open transaction. Its default reset would cost a round trip per request."""


def create_asgi_app() -> RequestLog:
    """What `wallet serve` runs: the app, with JSON logs and request ids around it."""
    settings = load_settings()
    configure_logging(settings.log_level)
    return RequestLog(create_app(settings))


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or load_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        url = settings.database_url or database_url()
        async with asyncpg.create_pool(
            url,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            timeout=settings.pool_acquire_timeout_seconds,
            statement_cache_size=settings.statement_cache_size,
            init=_init_connection,
            reset=_nothing_to_reset,
        ) as pool:
            app.state.pool = pool
            reporter = asyncio.create_task(report_pool(pool))
            try:
                yield
            finally:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter

    class MetricsController(PrometheusController):
        path = "/metrics"
        include_in_schema = False

    prometheus = PrometheusConfig(
        app_name="wallet",
        prefix="wallet",
        group_path=True,
        exclude=["/metrics", "/healthz", "/readyz"],
    )
    app = Litestar(
        route_handlers=[
            Router("/", route_handlers=API_CONTROLLERS, guards=[authorize], security=[{"bearer": []}]),
            healthz,
            readyz,
            MetricsController,
        ],
        dependencies={
            "caller": Provide(provide_caller, sync_to_thread=False),
            "write": Provide(provide_write),
        },
        before_request=strict_body,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        middleware=[prometheus.middleware],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Wallet service",
            version="1.0.0",
            description="Merchant wallets in IRR: deposits, withdrawals, transfers, history, commission.",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin(path="/")],
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")}
            ),
        ),
        logging_config=None,  # api/logs.py configures logging for the process
        debug=False,
    )
    app.state.token_verifier = TokenVerifier(settings)
    app.state.settings = settings
    return app
