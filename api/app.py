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
from api.holds import HoldController
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
    HoldController,
    CommissionController,
    LedgerController,
]


API_DESCRIPTION = """Merchant wallets in IRR: deposits (instant or scheduled), withdrawals, transfers,
holds (reserve money, then capture it in parts or void it), history and commission. Amounts are
JSON integers of rials, 1 to 10^15; never strings or floats.

**Authentication.** Every `/v1` operation needs `Authorization: Bearer <JWT>`, signed with the
service's key (HS256 by default). The token carries `sub` (who calls), `exp`, and `scope`: the
space-separated scopes it grants (`wallets:read`, `wallets:create`, `wallets:admin`,
`deposits:write`, `withdrawals:write`, `transfers:write`, `holds:write`, `commissions:read`,
`commissions:write`, `ledger:audit`); each operation names the one it needs. A token with an
`owner_id` claim acts only on that owner's wallets and their holds (another owner's wallet or
hold is 404; it may still transfer, or capture a hold, *to* any wallet); a token without one is a
service token.

**Idempotency.** Every POST takes an `Idempotency-Key` (1 to 255 printable ASCII characters),
scoped to the token's `sub`: a retry with the same key and request returns the first response
with `Idempotent-Replayed: true` and moves no money again; the same key with another request is
`409 idempotency_key_reused`. Keys are kept 48 hours.

**Errors** are `application/problem+json` with a stable `code`; each operation lists the codes it
may answer and what they mean."""


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
            Router("/", route_handlers=API_CONTROLLERS, guards=[authorize]),
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
            description=API_DESCRIPTION,
            use_handler_docstrings=True,
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
