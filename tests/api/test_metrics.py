"""/metrics as Prometheus scrapes it: request counts and pool gauges of the whole server, even
when `wallet serve --workers N` answers with one of several processes."""

from __future__ import annotations

import re
import time

import httpx

from tests.support.processes import running_server

REQUESTS = 30
SCRAPES = 8
RULES_ROUTE = (
    'wallet_requests_total{app_name="wallet",method="GET",path="/v1/commission-rules",status_code="200"}'
)


def sample(text: str, name_and_labels: str) -> float | None:
    match = re.search(rf"^{re.escape(name_and_labels)} (\S+)$", text, re.M)
    return None if match is None else float(match.group(1))


def scrape(base_url: str) -> float | None:
    """The rule reads one scrape counts, on a new connection (so the kernel spreads scrapes over
    the server's processes)."""
    with httpx.Client(base_url=base_url) as scraper:
        return sample(scraper.get("/metrics").text, RULES_ROUTE)


def scrape_counts(base_url: str, token: str, expected: float) -> list[float | None]:
    """REQUESTS rule reads, then SCRAPES scrapes: the request count each of them reports."""
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}) as http:
        for _ in range(REQUESTS):
            assert http.get("/v1/commission-rules").status_code == 200
    # A request is counted just after its response is sent: give the last one that moment.
    deadline = time.monotonic() + 10
    while scrape(base_url) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return [scrape(base_url) for _ in range(SCRAPES)]


def test_every_scrape_of_a_one_process_server_counts_every_request(api_url, token):
    before = scrape(api_url) or 0

    counts = scrape_counts(api_url, token(), before + REQUESTS)

    assert counts == [before + REQUESTS] * SCRAPES


def test_every_scrape_of_a_many_process_server_counts_every_request(database_url, token):
    with running_server(database_url, workers=3) as base_url:
        counts = scrape_counts(base_url, token(), REQUESTS)

    assert counts == [float(REQUESTS)] * SCRAPES


def test_pool_gauges_sum_the_pools_of_every_process(database_url):
    pool = {"WALLET_POOL_MIN_SIZE": "2", "WALLET_POOL_MAX_SIZE": "7"}
    with running_server(database_url, workers=2, **pool) as base_url:
        # Until both processes have started and reported (each refreshes its gauges every second).
        deadline = time.monotonic() + 30
        while True:
            text = httpx.get(f"{base_url}/metrics").text
            if sample(text, 'wallet_db_pool_connections{state="max"}') == 14 or time.monotonic() > deadline:
                break
            time.sleep(0.2)

    assert sample(text, 'wallet_db_pool_connections{state="max"}') == 14
    assert sample(text, 'wallet_db_pool_connections{state="in_use"}') == 0
    assert sample(text, 'wallet_db_pool_connections{state="idle"}') == 4


async def test_the_settlement_gauges_report_overdue_scheduled_deposits(db, database_url):
    """No worker runs here: a scheduled deposit that falls due stays overdue, and the API's
    reporter exports it (the WalletSettlementOverdue alert reads this gauge)."""
    import asyncio
    import contextlib
    from datetime import UTC, datetime, timedelta

    from prometheus_client import REGISTRY

    from api.lifespan import report_settlement
    from core.database import create_pool
    from core.metrics import SETTLEMENT_OVERDUE
    from core.settings import load_settings
    from tests.support.ledger import deposit_at, new_wallet, wait_until_due

    wallet = new_wallet(db)
    scheduled = deposit_at(db, wallet, 5_000, datetime.now(UTC) + timedelta(seconds=1.2))
    wait_until_due(db, scheduled["id"])
    SETTLEMENT_OVERDUE.set(-1)
    async with create_pool(load_settings({}), database_url, min_size=1, max_size=1) as pool:
        reporter = asyncio.create_task(report_settlement(pool))
        try:
            for _ in range(200):
                if REGISTRY.get_sample_value("wallet_scheduled_deposits_overdue") >= 0:
                    break
                await asyncio.sleep(0.05)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
    assert REGISTRY.get_sample_value("wallet_scheduled_deposits_overdue") == 1
    assert REGISTRY.get_sample_value("wallet_settlement_queue_depth") == 1  # its settlement job waits
