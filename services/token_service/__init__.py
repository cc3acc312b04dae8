"""The token service: the admin's /auth/token page, auth tokens, their redemption and refresh."""

from __future__ import annotations

from typing import Any

from flask import Flask

from services.shared.web import create_service_app


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = create_service_app(__name__, "token", config, can_sign=True)
    from .routes import blueprint

    app.register_blueprint(blueprint)
    return app
