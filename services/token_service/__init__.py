"""The token service: the admin's /auth/token page, auth tokens, their redemption and refresh,
and the share links' API."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from services.stores.clients import ClientTable
from services.stores.db import Database
from services.stores.oidc_state import OidcState
from services.stores.orthanc import OrthancResources
from services.stores.users import UserTable
from services.web.app import Resources, create_service_app
from services.web.cors import enable_cors
from services.web.oidc import OidcDeps, create_authorization_server


def create_app(config: dict[str, Any] | None = None) -> Flask:
    # The token service writes users (its page and API create them): SQLAlchemy.
    app = create_service_app(__name__, "token", config, database=Database, can_sign=True)
    # The CSRF token (bound to the session) is the protection. The strict HTTPS
    # Referer check is off because nginx decides what Host we see, and a Host
    # without the port would refuse every form; SameSite=Lax cookies remain.
    app.config.setdefault("WTF_CSRF_SSL_STRICT", False)
    csrf = CSRFProtect(app)

    from . import provider, shares
    from .routes import API_PATHS, API_VIEWS, blueprint

    zhiva: Resources[Database] = app.extensions["zhiva"]
    # The token service writes users through SQLAlchemy; the provider reads them (and
    # its clients) through the driver, as the login service does.
    create_authorization_server(
        app,
        OidcDeps(
            settings=zhiva.settings,
            codec=zhiva.codec,
            state=OidcState(zhiva.redis, zhiva.settings.redis_key_prefix, zhiva.revocations),
            clients=ClientTable(zhiva.settings.database_url),
            users=UserTable(zhiva.settings.database_url),
            revocations=zhiva.revocations,
        ),
    )
    # The JSON API and the OAuth endpoints are for scripts and other origins' pages: no
    # session, no CSRF token; browsers are held to the allowed origins instead (see routes).
    for view in (*API_VIEWS, *provider.VIEWS, *shares.VIEWS):
        csrf.exempt(view)
    app.register_blueprint(blueprint)
    app.register_blueprint(provider.blueprint)
    # Share links' API (CORS of its own: its paths carry ids, and DELETE); it asks Orthanc
    # whether a study is stored.
    app.extensions["zhiva_orthanc"] = OrthancResources(
        zhiva.settings.orthanc_http_port, zhiva.settings.secret_key
    )
    app.register_blueprint(shares.blueprint)
    enable_cors(app, zhiva.origins, API_PATHS + provider.CORS_PATHS)
    return app
