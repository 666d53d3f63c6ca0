"""Serving under a sub-path (`LOUPE_URL_PREFIX`, e.g. `/photos`) behind a reverse proxy that
passes the whole path on: the prefix moves from the request's path to its script root, so the
routes match as usual and every URL the app builds (`url_for`: the page's links, the API's
`thumb_url`, `Location` headers) carries it. Requests without the prefix (a health check on
the loopback port) are served as they come."""

from __future__ import annotations


class PrefixMiddleware:
    """WSGI middleware: `PATH_INFO` `/photos/api/search` becomes `SCRIPT_NAME` `/photos` and
    `PATH_INFO` `/api/search` (what werkzeug's `DispatcherMiddleware` does for a mounted app)."""

    def __init__(self, app, prefix: str):
        self.app = app
        self.prefix = prefix.rstrip("/")

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if self.prefix and (path == self.prefix or path.startswith(self.prefix + "/")):
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + self.prefix
            environ["PATH_INFO"] = path[len(self.prefix):] or "/"
        return self.app(environ, start_response)
