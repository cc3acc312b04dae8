"""What every Flask service shares: settings, clients, error shape, health, proxy trust.

Each service's `create_app(config=None)` calls `create_service_app`, then adds
its blueprint. Clients are built here, inside the factory, never at import.
The database client is the service's choice: the token service writes users
through SQLAlchemy (`Database`), the login service only reads them through the
driver (`UserTable`), so this module imports neither, and no login process
carries SQLAlchemy's heap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from services.domain.origins import OriginPolicy
from services.domain.tokens import TokenCodec, TokenError, TokenExpired, TokenInvalid, TokenMissing
from services.settings import AUTH_MAX_BODY, Settings, load_settings
from services.stores.revocation import RevocationStore, StoreUnavailable, redis_client

log = logging.getLogger("zhiva")

DATABASE_DOWN = "The database is unavailable (read-only or full disk?); try again in a moment"


class DatabaseClient(Protocol):
    """What the shared app asks of a service's database client (Database, UserTable)."""

    # The errors that mean the database cannot answer now: 503 DATABASE_DOWN.
    unavailable: tuple[type[Exception], ...]

    def ping(self) -> bool: ...


DB = TypeVar("DB", bound=DatabaseClient)


@dataclass
class Resources(Generic[DB]):
    """The clients a service uses, built once per process by its factory."""

    settings: Settings
    db: DB
    revocations: RevocationStore
    codec: TokenCodec
    origins: OriginPolicy

    @property
    def redis(self):  # type: ignore[no-untyped-def]
        return self.revocations.client

    def close(self) -> None:
        """Close the Redis connections (a worker holds them for its life; tests don't)."""
        self.revocations.client.close()


def resources() -> Resources[Any]:
    return current_app.extensions["zhiva"]


def error(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    """The one JSON error shape of the /auth endpoints (`GET /auth/openapi.json`)."""
    response = jsonify(message=message)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def create_service_app(
    import_name: str,
    service: str,
    config: dict[str, Any] | None = None,
    *,
    database: Callable[[str], DatabaseClient],
    can_sign: bool = False,
) -> Flask:
    """The service's Flask app; `database` makes its database client from DATABASE_URL."""
    settings = load_settings(config)
    app = Flask(import_name)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        # Forms and JSON bodies here are small; uploads go to Orthanc, not to us.
        MAX_CONTENT_LENGTH=AUTH_MAX_BODY,
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_NAME=f"zhiva_{service}",
        JSON_SORT_KEYS=False,
    )
    app.config.update(
        {k: v for k, v in (config or {}).items() if not k.isupper() or k in app.config}
    )
    # nginx is the only client and overwrites X-Forwarded-For/-Proto with what it
    # saw, so exactly one proxy hop is trusted and outside spoofing is ignored.
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1)  # type: ignore[method-assign]

    redis = redis_client(settings.redis_url)
    db = database(settings.database_url)
    app.extensions["zhiva"] = Resources(
        settings=settings,
        db=db,
        revocations=RevocationStore(
            redis, settings.redis_key_prefix, keep_seconds=settings.longest_token_lifetime
        ),
        codec=TokenCodec.from_settings(settings, can_sign=can_sign),
        origins=OriginPolicy(settings.origin_patterns),
    )
    app.config["SERVICE_NAME"] = service
    _register_errors(app, db.unavailable)
    app.add_url_rule("/healthz", "healthz", _healthz)
    return app


def _healthz():  # type: ignore[no-untyped-def]
    res = resources()
    checks = {"redis": res.revocations.ping(), "database": res.db.ping()}
    status = 200 if all(checks.values()) else 503
    body = {
        "service": current_app.config["SERVICE_NAME"],
        "status": "ok" if status == 200 else "degraded",
    }
    return jsonify(**body, checks=checks), status


def _register_errors(app: Flask, database_unavailable: tuple[type[Exception], ...]) -> None:
    @app.errorhandler(TokenError)
    def _token_error(exc: TokenError):  # type: ignore[no-untyped-def]
        if isinstance(exc, TokenInvalid):
            log.info("token refused on %s %s: %s", request.method, request.path, exc.reason)
        status = 401 if isinstance(exc, TokenMissing | TokenExpired) else 403
        return error(str(exc), status)

    @app.errorhandler(StoreUnavailable)
    def _store_down(exc: StoreUnavailable):  # type: ignore[no-untyped-def]
        log.error("redis unavailable on %s %s", request.method, request.path)
        return error(str(exc), 503, {"Retry-After": "5"})

    def _database_down(exc: Exception):  # type: ignore[no-untyped-def]
        # Read-only or full disk, a lock held too long, PostgreSQL gone: nothing was
        # written (the session rolled back); say so with a status a client can retry.
        # Only the driver's error is logged: SQLAlchemy's wrapper around it (`orig`)
        # also spells out the statement and its parameters (a password hash, say).
        cause = getattr(exc, "orig", exc)
        log.error("database unavailable on %s %s: %s", request.method, request.path, cause)
        return error(DATABASE_DOWN, 503, {"Retry-After": "5"})

    for unavailable in database_unavailable:
        app.register_error_handler(unavailable, _database_down)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        return error(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        # The client learns nothing internal; the log has the traceback (never a token:
        # request bodies and headers are not logged).
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error("Internal error", 500)
