"""The policy service: decides, from the token, who may read and who may write in Orthanc."""

from __future__ import annotations

from typing import Any

from flask import Flask

from services.shared.web import create_service_app, resources

from .audit import AuditLog, log_to_stderr
from .decision import PolicyEngine
from .routes import DecisionEndpoints


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = create_service_app(__name__, "policy", config, can_sign=False)
    with app.app_context():
        res = resources()
    engine = PolicyEngine(res.codec, res.revocations, res.db)
    audit = AuditLog(res.settings.state_dir / "logs" / "audit.log")
    log_to_stderr()
    app.extensions["zhiva_policy"] = engine
    app.extensions["zhiva_audit"] = audit
    # POST /webhook and GET /authorize: served before Flask (routes.py says why).
    app.wsgi_app = DecisionEndpoints(app.wsgi_app, engine, audit)  # type: ignore[method-assign]
    return app
