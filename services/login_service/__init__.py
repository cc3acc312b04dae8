"""The login service: /auth/sign-in, which sends the viewer back with a one-off auth token."""

from __future__ import annotations

from typing import Any

from flask import Flask

from services.shared.web import create_service_app


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = create_service_app(__name__, "login", config, can_sign=True)
    from .routes import blueprint

    app.register_blueprint(blueprint)
    return app
