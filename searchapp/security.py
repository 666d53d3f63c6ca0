"""Who may call what: the Host check (DNS rebinding), the cross-site check on every request
that changes something (CSRF), bearer tokens and the page's session cookie, and safe
response headers. docs/security.md describes the threat model these checks answer."""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from flask import Flask, current_app, g, redirect, request, url_for

from .errors import ApiError

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# Sent by the page on every API call. A cross-site form cannot set a header, and a cross-site
# fetch that sets one needs a CORS preflight, which this server never grants.
REQUEST_HEADER = "X-Loupe-Request"
SESSION_COOKIE = "loupe_session"
SESSION_DAYS = 30
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SAME_ORIGIN_FETCH = frozenset({"same-origin", "none"})  # Sec-Fetch-Site values of the page itself
# Endpoints anyone who passes the Host check may call: liveness, the API description, the
# page's own files and the sign-in page. Everything else is a read (or a write) of the collection.
PUBLIC_ENDPOINTS = frozenset({"api.health", "api.openapi", "static", "pages.login", "pages.login_submit",
                              "pages.logout"})
EXTENSION = "loupe_access"
METRICS_ENDPOINT = "metrics.metrics"  # searchapp.metrics.ENDPOINT: its own rule (demand_metrics)
READ, WRITE = "read", "write"


def is_loopback(host: str) -> bool:
    """Whether a `--host` value only listens on this machine (`localhost`, 127.0.0.0/8, ::1)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AccessPolicy:
    """The server's rules, fixed when the app is made.

    `read_token` None leaves reads open; `trusted_hosts` None answers any Host header (a
    server bound beyond loopback with no names configured: there a rebound browser gains
    nothing an open network peer does not have, and the tokens guard the rest)."""

    write_token: str | None = field(default=None, repr=False)
    read_token: str | None = field(default=None, repr=False)
    trusted_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS
    insecure: bool = False  # served beyond loopback without any token, by explicit choice
    metrics_token: str | None = field(default=None, repr=False)  # LOUPE_METRICS_TOKEN: reads /metrics only

    @classmethod
    def create(cls, settings, bind_host: str | None = None) -> "AccessPolicy":
        """The policy for `settings` (`searchapp.settings.ServiceSettings`) served on `bind_host` (None: loopback, as in tests).

        Beyond loopback, reads need a token too: LOUPE_READ_TOKEN when set, else the API token
        (`loupe serve` refuses such a bind without the API token unless told it is insecure)."""
        loopback = bind_host is None or is_loopback(bind_host)
        read_token = settings.read_token or (None if loopback else settings.api_token)
        names = LOOPBACK_HOSTS + tuple(settings.trusted_hosts)
        hosts = names if loopback or settings.trusted_hosts else None
        return cls(settings.api_token, read_token, hosts, insecure=not loopback and not settings.api_token,
                   metrics_token=getattr(settings, "metrics_token", None))

    @property
    def reads_protected(self) -> bool:
        return self.read_token is not None

    @property
    def writes_protected(self) -> bool:
        return self.write_token is not None

    def role_of_token(self, given: str) -> str | None:
        """WRITE for the API token, READ for the read token, else None (constant time)."""
        if self.write_token and hmac.compare_digest(given.encode(), self.write_token.encode()):
            return WRITE
        if self.read_token and hmac.compare_digest(given.encode(), self.read_token.encode()):
            return READ
        return None

    def session_value(self, role: str) -> str:
        """The cookie that stands for `role`: a MAC of the role under its token (never the token)."""
        token = self.write_token if role == WRITE else self.read_token
        return f"{role}.{_mac(token or '', role)}"

    def role_of_session(self, value: str) -> str | None:
        role, _, mac = value.partition(".")
        token = {WRITE: self.write_token, READ: self.read_token}.get(role)
        if not token or not hmac.compare_digest(mac.encode(), _mac(token, role).encode()):
            return None
        return role

    def host_trusted(self, host: str | None) -> bool:
        if self.trusted_hosts is None or not host:  # no Host header: not a browser
            return True
        name = _host_name(host)
        for trusted in self.trusted_hosts:
            if name == trusted or (trusted.startswith(".") and name.endswith(trusted)):
                return True
        return False


def _mac(token: str, role: str) -> str:
    return hmac.new(token.encode(), f"loupe-session:{role}".encode(), hashlib.sha256).hexdigest()


def _host_name(host: str) -> str:
    """`Host` without its port, lower case; IPv6 literals keep their brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.partition(":")[0]


def _origin_host(origin: str) -> str | None:
    """`scheme://host[:port]` → `host[:port]` without a default port; None when unparsable."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    name = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return name if port in (None, default) else f"{name}:{port}"


def _request_host(host: str) -> str:
    host = host.strip().lower()
    for default in (":80", ":443"):
        if host.endswith(default):
            return host[: -len(default)]
    return host


def policy() -> AccessPolicy:
    return current_app.extensions[EXTENSION]


# -- the checks -----------------------------------------------------------------------------------
def check_host() -> None:
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 reaches this
    server with `Host: evil.example`, which is refused."""
    if not policy().host_trusted(request.headers.get("Host")):
        raise ApiError(400, "bad_host", "this server does not answer for that host name "
                                        "(add it to LOUPE_TRUSTED_HOSTS if it is yours)")


def check_same_origin() -> None:
    """CSRF: a request that changes something must come from this server's own page or from
    a client that is not a browser. Browsers say where a request comes from (`Sec-Fetch-Site`,
    `Origin`); a cross-site form or fetch is refused whatever it carries."""
    if request.method in SAFE_METHODS:
        return
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site.lower() not in SAME_ORIGIN_FETCH:
        raise _cross_site()
    origin = request.headers.get("Origin")
    if origin is not None and _origin_host(origin) != _request_host(request.headers.get("Host", "")):
        raise _cross_site()


def _cross_site() -> ApiError:
    return ApiError(403, "cross_site", "requests from another site may not change anything here")


@dataclass(frozen=True)
class Grant:
    """What the request proved: a role (None: nothing) and how (header or cookie)."""

    role: str | None
    by_cookie: bool = False
    header_error: ApiError | None = None  # a malformed or wrong Authorization header


def grant() -> Grant:
    """The request's credentials, read once: a bearer header wins over the session cookie."""
    if "loupe_grant" not in g:
        g.loupe_grant = _read_grant(policy())
    return g.loupe_grant


def _read_grant(rules: AccessPolicy) -> Grant:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return Grant(None, header_error=_unauthorized("this endpoint needs an 'Authorization: Bearer <token>' header"))
        role = rules.role_of_token(given.strip())
        if role is None:
            return Grant(None, header_error=ApiError(403, "forbidden", "the bearer token is not valid"))
        return Grant(role)
    cookie = request.cookies.get(SESSION_COOKIE)
    return Grant(rules.role_of_session(cookie) if cookie else None, by_cookie=True)


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": 'Bearer realm="loupe"'})


def demand(role: str) -> None:
    """Raise unless the request holds `role` (WRITE, or READ which WRITE includes). A session
    cookie counts for a request that changes something only with the page's own header."""
    rules = policy()
    needed = rules.write_token if role == WRITE else rules.read_token
    if needed is None:
        return
    held = grant()
    if held.header_error is not None:
        raise held.header_error
    if held.role is None:
        what = "the API token (LOUPE_API_TOKEN)" if role == WRITE else "a token"
        raise _unauthorized(f"this endpoint needs {what}: send 'Authorization: Bearer <token>' or sign in at /login")
    if role == WRITE and held.role != WRITE:
        raise ApiError(403, "forbidden", "this endpoint needs the API token, not the read token")
    if held.by_cookie and request.method not in SAFE_METHODS and not request.headers.get(REQUEST_HEADER):
        raise _cross_site()


def demand_metrics() -> None:
    """`/metrics`: with LOUPE_METRICS_TOKEN set, that token as a bearer header (or any token that
    may read: the read or API token); without it, the read rule. A scraper then needs no token
    that could read the pictures."""
    rules = policy()
    if rules.metrics_token is None:
        demand(READ)
        return
    header = request.headers.get("Authorization") or ""
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), rules.metrics_token.encode()):
        return
    held = grant()
    if held.role is not None:
        return
    if held.header_error is not None:
        raise held.header_error
    raise _unauthorized("/metrics needs 'Authorization: Bearer <LOUPE_METRICS_TOKEN>'")


def require_token(view):
    """Refuse the request unless it carries the API token (when one is configured), as
    `Authorization: Bearer <LOUPE_API_TOKEN>` or a signed-in session. Compared in constant time."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        demand(WRITE)
        return view(*args, **kwargs)

    return wrapped


def can_read() -> bool:
    """Whether this request may read the collection (without raising)."""
    try:
        demand(READ)
    except ApiError:
        return False
    return True


def can_write() -> bool:
    """Whether this request may use what needs the API token (without raising)."""
    try:
        demand(WRITE)
    except ApiError:
        return False
    return True


def _guard():
    check_host()
    check_same_origin()
    endpoint = request.endpoint
    if endpoint is None or endpoint in PUBLIC_ENDPOINTS:
        return None  # unknown URLs answer 404 below
    if endpoint == METRICS_ENDPOINT:
        demand_metrics()
        return None
    try:
        demand(READ)
    except ApiError:
        if endpoint in ("pages.search_page", "pages.duplicates_page", "pages.map_page"):  # a person at a page: the sign-in form
            return redirect(url_for("pages.login"))
        raise
    return None


def init_app(app: Flask, rules: AccessPolicy) -> None:
    app.extensions[EXTENSION] = rules
    app.before_request(_guard)

    @app.after_request
    def headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        if policy().reads_protected:
            response.headers.add("Vary", "Authorization, Cookie")
        return response
