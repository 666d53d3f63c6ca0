"""The HTML pages: the search page (driven by static/app.js) and the sign-in page that turns a
token into a session cookie, for browsers (whose image tags cannot send a bearer header)."""

from __future__ import annotations

import re
from pathlib import Path

from flask import Blueprint, redirect, render_template, request, send_from_directory, url_for

from .errors import ApiError

from .security import SESSION_COOKIE, SESSION_DAYS, WRITE, grant, policy
from .services import service

bp = Blueprint("pages", __name__)

DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"
DOC_NAME = re.compile(r"[a-z0-9][a-z0-9-]*\.md")


@bp.get("/")
def search_page():
    rules, held = policy(), grant()
    access = {"insecure": rules.insecure, "tokens": rules.reads_protected or rules.writes_protected,
              "signed_in": held.by_cookie and held.role is not None,
              "can_write": not rules.writes_protected or held.role == WRITE}
    return render_template("search.html", health=service().health(), access=access,
                           running_job=service().indexing_jobs.running_id,
                           can_generate=access["can_write"] and service().generator_configured())


@bp.get("/docs/<name>")
def doc(name: str):
    """One of Loupe's guides (docs/*.md) as plain text: the page links here instead of giving
    command-line instructions. Readable by whoever may read the collection."""
    if not DOC_NAME.fullmatch(name) or not (DOCS_DIR / name).is_file():
        raise ApiError(404, "not_found", f"no guide named {name!r}")
    return send_from_directory(DOCS_DIR, name, mimetype="text/plain", max_age=3600)


@bp.get("/duplicates")
def duplicates_page():
    """The duplicates review (driven by static/duplicates.js over /api/duplicates)."""
    rules, held = policy(), grant()
    can_write = not rules.writes_protected or held.role == WRITE
    return render_template("duplicates.html", can_write=can_write)


@bp.get("/map")
def map_page():
    """The map of the collection (driven by static/map.js over GET /api/map)."""
    return render_template("map.html", health=service().health())


@bp.get("/login")
def login():
    return render_template("login.html", error=None, tokens=policy().reads_protected or policy().writes_protected)


@bp.post("/login")
def login_submit():
    """A token typed into the form becomes an HttpOnly, SameSite=Strict cookie that stands for
    its role (a MAC under the token, never the token itself)."""
    rules = policy()
    role = rules.role_of_token((request.form.get("token") or "").strip())
    if role is None:
        page = render_template("login.html", error="That token is not valid.", tokens=True)
        return page, 401
    response = redirect(url_for("pages.search_page"), code=303)
    response.set_cookie(SESSION_COOKIE, rules.session_value(role), max_age=SESSION_DAYS * 24 * 3600,
                        httponly=True, samesite="Strict", secure=request.is_secure, path="/")
    return response


@bp.post("/logout")
def logout():
    response = redirect(url_for("pages.login"), code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Strict")
    return response
