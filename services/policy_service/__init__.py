"""The policy service: decides, from the token, who may read and who may write in Orthanc.

A plain WSGI application, not Flask like the token and login services: its
three endpoints (routes.py) need none of Flask, and neither Flask nor
SQLAlchemy is loaded, so every policy process (gunicorn's master and one
worker per core) carries neither heap (docs/BENCHMARKS.md has the figures;
tests/test_policy_users.py checks it stays so). gunicorn serves it through
`create_asgi_app()` on uvicorn workers (asgi.py says why); the tests drive
the WSGI application `create_app()` returns.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from typing import Any

from services.access.handoff import handoff_key
from services.domain.tokens import TokenCodec
from services.settings import Settings, load_settings
from services.stores.clients import ClientTable
from services.stores.orthanc import OrthancResources
from services.stores.revocation import RevocationMirror
from services.stores.users import UserTable

from .asgi import ASGIApp, serve
from .audit import AuditLog, log_to_stderr
from .decision import PolicyEngine
from .routes import DecisionEndpoints, HealthEndpoint, StartResponse


class PolicyApp:
    """The WSGI callable gunicorn serves: decisions first, then `/healthz`, 404 for the rest."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.users = UserTable(settings.database_url)
        # Followed from Redis by a thread in each worker: no Redis call per decision.
        self.revocations = RevocationMirror(settings.redis_url, settings.redis_key_prefix)
        self.engine = PolicyEngine(
            TokenCodec.from_settings(settings, can_sign=False),
            self.revocations,
            self.users,
            clients=ClientTable(settings.database_url),
            # Which study a series or an instance is in, for share tokens.
            resources=(
                OrthancResources(settings.orthanc_http_port, settings.secret_key)
                if settings.secret_key
                else None
            ),
        )
        self.audit = AuditLog(settings.state_dir / "logs" / "audit.log")
        health = HealthEndpoint(
            "policy",
            {"redis": lambda: self.revocations.ping(), "database": lambda: self.users.ping()},
        )
        self.wsgi_app = DecisionEndpoints(
            health,
            self.engine,
            self.audit,
            handoff_key(settings.secret_key) if settings.secret_key else None,
        )

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        return self.wsgi_app(environ, start_response)

    def start(self) -> None:
        """In each worker, before its first request: begin following the revocations."""
        self.revocations.wait_synced(timeout=1.0)
        # What is loaded by now lives as long as the worker: out of the collector's sight,
        # so its full collections walk only what requests made (less CPU per decision).
        gc.freeze()

    def close(self) -> None:
        self.revocations.stop()


def create_app(config: dict[str, Any] | None = None) -> PolicyApp:
    app = PolicyApp(load_settings(config))
    log_to_stderr()
    return app


def create_asgi_app(config: dict[str, Any] | None = None) -> ASGIApp:
    """What gunicorn's uvicorn workers serve (infra/render.py, infra/gunicorn.conf.py)."""
    app = create_app(config)
    return serve(app, on_startup=app.start, on_shutdown=app.close)
