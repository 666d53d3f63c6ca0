"""The access log: one line per request on the `loupe.access` logger (Python logging).

A line holds the client address, the method, the path *without its query string*, the status,
the response's bytes and the milliseconds taken:

    127.0.0.1 "GET /api/search" 200 2214 B 12.4 ms

Left out on purpose: the query string (search text `q`, tokens a client may put there), every
header (Authorization, cookies), request bodies (uploaded pictures) and anything from the
response body. The path alone can name an image id or a job id, which are not secrets.
`loupe serve` logs these lines to stderr at INFO (off with `-q`).

Behind reverse proxies, every peer is a proxy: with `LOUPE_TRUSTED_PROXIES=N`, the client shown
is the address X-Forwarded-For's N-th entry from the right names (what the outermost trusted
proxy saw), when it is an IP address; else the peer's. Only the log reads it: no access rule
depends on a client's address."""

from __future__ import annotations

import ipaddress
import logging
import time

from flask import Flask, g, request

LOGGER = "loupe.access"
log = logging.getLogger(LOGGER)


def _started() -> None:
    g.loupe_access_started = time.perf_counter()


def access_line(client: str | None, method: str, path: str, status: int, size: int | None, ms: float) -> str:
    """The logged line (the path must already be without its query string)."""
    shown = path.replace('"', "%22").replace("\n", "%0A").replace("\r", "%0D")
    return f'{client or "-"} "{method} {shown}" {status} {"-" if size is None else size} B {ms:.1f} ms'


def client_address(peer: str | None, forwarded_for: str | None, proxies: int) -> str | None:
    """The client's address: `peer`, or behind `proxies` trusted reverse proxies the entry of
    X-Forwarded-For (`forwarded_for`, comma-separated) that the outermost of them added; `peer`
    when the header has fewer entries or that one is not an IP address."""
    if proxies <= 0 or not forwarded_for:
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",")]
    if len(hops) < proxies:
        return peer
    try:
        return str(ipaddress.ip_address(hops[-proxies]))
    except ValueError:
        return peer


def init_app(app: Flask) -> None:
    """Log every request `app` answers on `loupe.access` (at INFO)."""
    app.before_request(_started)
    proxies = getattr(app.config["LOUPE_SETTINGS"], "trusted_proxies", 0)

    @app.after_request
    def log_request(response):
        if log.isEnabledFor(logging.INFO):
            started = g.get("loupe_access_started")
            ms = 0.0 if started is None else (time.perf_counter() - started) * 1000
            client = client_address(request.remote_addr, request.headers.get("X-Forwarded-For"), proxies)
            log.info(access_line(client, request.method, request.path, response.status_code,
                                 response.content_length, ms))
        return response
