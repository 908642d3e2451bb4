"""What runs before every handler: OPTIONS answered with Allow, and bodies decoded strictly."""

from __future__ import annotations

import msgspec
from litestar import Request, Response
from litestar.routes import HTTPRoute

from api.errors import ApiError


async def before_request(request: Request) -> Response | None:
    """Before every handler: answer OPTIONS, or check the body strictly."""
    if request.method == "OPTIONS":
        return allowed_methods(request)
    await strict_body(request)
    return None


def allowed_methods(request: Request) -> Response:
    """OPTIONS: 204 with Allow naming every method of the resource. Litestar's own OPTIONS
    handler names those of the route it was made with, and a route that gains a method (GET
    and POST /v1/wallets) is rebuilt without it learning so."""
    template = request.scope["path_template"]
    methods = next(
        route.methods
        for route in request.app.routes
        if isinstance(route, HTTPRoute) and route.path_format == template
    )
    return Response(None, status_code=204, headers={"Allow": ", ".join(sorted(methods))})


async def strict_body(request: Request) -> None:
    """Decode the body strictly (Litestar's own parse coerces "10" and 10.0 into 10; a payments
    API must refuse both). Errors become 400 invalid_request."""
    data_field = request.route_handler.parsed_data_field
    if data_field is None:
        return
    try:
        msgspec.json.decode(await request.body(), type=data_field.annotation, strict=True)
    except msgspec.ValidationError as error:
        raise ApiError(400, "invalid_request", str(error)) from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise ApiError(400, "invalid_request", "the body is not valid UTF-8 JSON") from None
    except RecursionError:
        raise ApiError(400, "invalid_request", "the body is nested too deeply") from None
