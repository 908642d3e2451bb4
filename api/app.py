"""The Litestar application: plumbing only. Handlers live in one module per resource."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
from litestar import Litestar, Response, Router
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController

from api.auth import TokenVerifier, authorize
from api.database import database_url
from api.errors import EXCEPTION_HANDLERS, problem
from api.logs import RequestLog, configure_logging
from api.metrics import report_pool
from api.movements import MovementController
from api.plumbing import before_request, provide_caller, provide_write
from api.probes import healthz, readyz
from api.schemas import RequestSchemaPlugin
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


async def _init_connection(connection: asyncpg.Connection) -> None:
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


async def _problem_for_no_page(response: Response) -> Response:
    """Litestar answers a /schema/... path that names no page with an HTML 404; this API
    answers every error with problem+json."""
    if response.status_code == 404:
        return problem(404, "not_found", "no such resource")
    return response


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
        before_request=before_request,
        plugins=[RequestSchemaPlugin()],
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
            openapi_router=Router(
                "/schema", route_handlers=[], include_in_schema=False, after_request=_problem_for_no_page
            ),
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
