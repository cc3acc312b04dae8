"""The policy service: decides, from the token, who may read and who may write in Orthanc."""

from __future__ import annotations

from typing import Any

from flask import Flask

from services.shared.web import create_service_app


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = create_service_app(__name__, "policy", config, can_sign=False)
    from .routes import blueprint

    app.register_blueprint(blueprint)
    return app
