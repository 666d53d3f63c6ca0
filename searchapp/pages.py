"""The HTML page: search box, drop zone, results grid and detail view (driven by static/app.js)."""

from __future__ import annotations

from flask import Blueprint, render_template

from .services import service

bp = Blueprint("pages", __name__)


@bp.get("/")
def search_page():
    return render_template("search.html", health=service().health())
