"""/metrics as Prometheus scrapes it: request counts and pool gauges of the whole server, even
when `wallet serve --workers N` answers with one of several processes."""

from __future__ import annotations

import re
import time

import httpx

from tests.api.conftest import running_server

REQUESTS = 30
SCRAPES = 8
RULES_ROUTE = (
    'wallet_requests_total{app_name="wallet",method="GET",path="/v1/commission-rules",status_code="200"}'
)


def sample(text: str, name_and_labels: str) -> float | None:
    match = re.search(rf"^{re.escape(name_and_labels)} (\S+)$", text, re.M)
    return None if match is None else float(match.group(1))


def scrape_counts(base_url: str, token: str) -> list[float | None]:
    """REQUESTS rule reads, then SCRAPES scrapes, each on a new connection (so the kernel spreads
    them over the server's processes); the request count each scrape reports."""
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}) as http:
        for _ in range(REQUESTS):
            assert http.get("/v1/commission-rules").status_code == 200
    counts = []
    for _ in range(SCRAPES):
        with httpx.Client(base_url=base_url) as scraper:
            counts.append(sample(scraper.get("/metrics").text, RULES_ROUTE))
    return counts


def test_every_scrape_of_a_one_process_server_counts_every_request(api_url, token):
    before = sample(httpx.get(f"{api_url}/metrics").text, RULES_ROUTE) or 0

    counts = scrape_counts(api_url, token())

    assert counts == [before + REQUESTS] * SCRAPES


def test_every_scrape_of_a_many_process_server_counts_every_request(database_url, token):
    with running_server(database_url, workers=3) as base_url:
        counts = scrape_counts(base_url, token())

    assert counts == [float(REQUESTS)] * SCRAPES


def test_pool_gauges_sum_the_pools_of_every_process(database_url):
    pool = {"WALLET_POOL_MIN_SIZE": "2", "WALLET_POOL_MAX_SIZE": "7"}
    with running_server(database_url, workers=2, **pool) as base_url:
        time.sleep(1.5)  # the gauges are refreshed every second
        text = httpx.get(f"{base_url}/metrics").text

    assert sample(text, 'wallet_db_pool_connections{state="max"}') == 14
    assert sample(text, 'wallet_db_pool_connections{state="in_use"}') == 0
    assert sample(text, 'wallet_db_pool_connections{state="idle"}') == 4
