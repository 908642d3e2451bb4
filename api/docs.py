"""The API reference at /schema: Swagger UI served by the service itself, from the swagger-ui-py
package's copy of its assets, so the page works with no internet; the raw document is at
/schema/openapi.json (and .yaml)."""

from __future__ import annotations

from pathlib import Path

import swagger_ui
from litestar.connection import ASGIConnection
from litestar.exceptions import NotFoundException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

ASSETS_PATH = "/schema/assets"
# What the page loads; the package ships more (the editor, source maps), which are not served.
ASSETS = ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css", "favicon-32x32.png")


def _assets_folder() -> Path:
    return Path(swagger_ui.__file__).resolve().parent / "static"


def docs_page() -> SwaggerRenderPlugin:
    return SwaggerRenderPlugin(
        path="/",
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
    )


def docs_assets():
    """GET /schema/assets/<file> for the files in ASSETS only."""
    folder = _assets_folder()
    missing = [name for name in ASSETS if not (folder / name).is_file()]
    if missing:  # a swagger-ui-py release that moved its files: fail at start-up, not in a browser
        raise RuntimeError(f"swagger-ui-py does not ship {', '.join(missing)} in {folder}")
    return create_static_files_router(
        path=ASSETS_PATH,
        directories=[folder],
        include_in_schema=False,
        name="docs-assets",
        guards=[_only_the_page_assets],
    )


def _only_the_page_assets(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    if str(connection.path_params.get("file_path", "")).lstrip("/") not in ASSETS:
        raise NotFoundException()
