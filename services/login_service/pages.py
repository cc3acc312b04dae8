"""The login service's HTML answers: one set of headers for every page it shows."""

from __future__ import annotations

from typing import Any

from flask import Response, render_template


def page(
    template: str, status: int = 200, form_origin: str | None = None, **context: Any
) -> Response:
    """A page that runs no script, frames nothing and is never cached.

    Its forms may post only to us; `form_origin` is the one other origin a form's answer may
    redirect to (Chrome holds the redirect after a POST to form-action too).
    """
    response = Response(render_template(template, **context), status=status)
    form_action = "'self'" + (f" {form_origin}" if form_origin else "")
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self'; "
        f"form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = "no-store"
    return response
