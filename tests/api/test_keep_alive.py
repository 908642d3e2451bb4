"""Idle keep-alive connections: the client closes first, never the server under a client's request.

A server that drops an idle connection at the moment a client reuses it loses that request to a
connection reset. httpx forgets idle connections after 5 s, load balancers after about 60 s, so
the server keeps them longer (WALLET_HTTP_KEEP_ALIVE_SECONDS, 75 s by default).
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

from tests.support.processes import running_server

HTTPX_IDLE_EXPIRY_SECONDS = 5.0


def _connect(base_url: str) -> socket.socket:
    address = urlsplit(base_url)
    connection = socket.create_connection((address.hostname, address.port), timeout=10)
    connection.settimeout(10)
    return connection


def _get_healthz(connection: socket.socket) -> bytes:
    """One keep-alive GET /healthz on an open connection; returns the status line."""
    connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: wallet\r\n\r\n")
    with connection.makefile("rb") as reader:
        status_line = reader.readline()
        assert status_line, "the server closed the connection instead of answering"
        headers = {}
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        reader.read(int(headers["content-length"]))
    return status_line


def test_an_idle_connection_outlives_the_httpx_idle_expiry(api_url):
    with _connect(api_url) as connection:
        assert _get_healthz(connection).startswith(b"HTTP/1.1 200")
        time.sleep(HTTPX_IDLE_EXPIRY_SECONDS + 1)
        assert _get_healthz(connection).startswith(b"HTTP/1.1 200")


def test_the_server_closes_an_idle_connection_after_the_configured_time(database_url):
    with (
        running_server(database_url, WALLET_HTTP_KEEP_ALIVE_SECONDS="1") as base_url,
        _connect(base_url) as connection,
    ):
        assert _get_healthz(connection).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        # With the 75 s default the 10 s socket timeout would fire instead.
        assert connection.recv(4096) == b""
        assert time.monotonic() - started < 10
