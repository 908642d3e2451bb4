"""The docs page in a real browser: headless Chromium, cut off from every host but the service,
renders every operation of the document from the assets the service serves itself."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest

BROWSER_TIMEOUT_SECONDS = 90


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium is not installed (apt-get install chromium; `make test` installs it as root)")


def test_the_docs_page_renders_every_operation_with_no_network(api_url: str):
    document = httpx.get(f"{api_url}/schema/openapi.json").json()
    operations = {
        (operation["tags"][0], operation["operationId"])
        for path in document["paths"].values()
        for operation in path.values()
    }
    assert len(operations) >= 16
    page = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",  # tests may run as root
            "--disable-gpu",
            "--no-first-run",
            # Every host name but the service's fails to resolve: a CDN asset would not load.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
            "--virtual-time-budget=15000",
            "--dump-dom",
            f"{api_url}/schema",
        ],
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT_SECONDS,
    )
    dom = page.stdout
    assert "swagger-ui" in dom, page.stderr[-2000:]
    # Swagger UI gives each operation's block the id operations-<tag>-<operationId>.
    missing = sorted(
        operation_id
        for tag, operation_id in operations
        if f'id="operations-{tag.replace(" ", "_")}-{operation_id}"' not in dom
    )
    assert not missing, missing
