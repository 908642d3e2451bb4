"""The Litestar application: plumbing only. Handlers live in one module per resource."""

from __future__ import annotations

from litestar import Litestar, Response, Router
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController

from api.audit import LedgerController
from api.auth import TokenVerifier, authorize
from api.commission import CommissionController
from api.dependencies import provide_caller, provide_write
from api.docs import docs_assets, docs_page
from api.errors import EXCEPTION_HANDLERS, problem
from api.lifespan import database_lifespan
from api.movements import MovementController
from api.probes import healthz, readyz
from api.request_checks import before_request
from api.request_log import RequestLog
from api.schemas import RequestSchemaPlugin
from api.transactions import TransactionController
from api.wallets import WalletController
from core.logs import configure_logging
from core.settings import Settings, load_settings

API_CONTROLLERS = [
    WalletController,
    MovementController,
    TransactionController,
    CommissionController,
    LedgerController,
]


async def _problem_for_no_page(response: Response) -> Response:
    """Litestar answers a /schema/... path that names no page with an HTML 404; this API
    answers every error with problem+json."""
    if response.status_code == 404:
        return problem(404, "not_found", "no such resource")
    return response


def create_asgi_app() -> RequestLog:
    """What `wallet serve` runs (uvicorn calls it in each process it starts): the app, with JSON
    logs and request ids around it."""
    settings = load_settings()
    configure_logging(settings.log_level)
    return RequestLog(create_app(settings))


def create_app(settings: Settings) -> Litestar:
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
            docs_assets(),
        ],
        dependencies={
            "caller": Provide(provide_caller, sync_to_thread=False),
            "write": Provide(provide_write),
        },
        before_request=before_request,
        plugins=[RequestSchemaPlugin()],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[database_lifespan(settings)],
        middleware=[prometheus.middleware],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Wallet service",
            version="1.0.0",
            description="Merchant wallets in IRR: deposits, withdrawals, transfers, history, commission.",
            path="/schema",
            render_plugins=[docs_page()],
            openapi_router=Router(
                "/schema", route_handlers=[], include_in_schema=False, after_request=_problem_for_no_page
            ),
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")}
            ),
        ),
        logging_config=None,  # core/logs.py configures logging for the process
        debug=False,
    )
    app.state.token_verifier = TokenVerifier(settings)
    app.state.settings = settings
    return app
