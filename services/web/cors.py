"""CORS for the /auth endpoints: allowed origins only, echoed exactly, never `*`."""

from __future__ import annotations

from flask import Flask, Response, request

from services.domain.origins import OriginPolicy

EXPOSED_HEADERS = "Authorization"
ALLOWED_HEADERS = "Authorization, Content-Type, X-CSRFToken"


def add_cors_headers(response: Response, origin: str | None, policy: OriginPolicy) -> Response:
    response.vary.add("Origin")
    if origin and policy.allows(origin):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
    return response


def enable_cors(app: Flask, policy: OriginPolicy, paths: tuple[str, ...]) -> None:
    """Answer CORS (preflights included, by Flask's automatic OPTIONS) on `paths`."""

    @app.after_request
    def _cors(response: Response) -> Response:
        if request.path in paths:
            add_cors_headers(response, request.headers.get("Origin"), policy)
        return response
