"""The login service: /auth/sign-in, which sends the viewer back with a one-off auth token;
the OpenID Connect provider's browser pages; share links' page (/auth/share/<id>).

It only reads users, through the database driver (services/stores/users.py),
so no login process carries SQLAlchemy's heap (tests/test_policy_users.py
checks it stays so).
"""

from __future__ import annotations

import math
from typing import Any

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from services.settings import SettingsError
from services.stores.clients import ClientTable
from services.stores.oidc_state import OidcState
from services.stores.share_table import ShareTable
from services.stores.throttle import MAX_SLOWDOWN_SECONDS, SLOWDOWN_STEP_SECONDS, Throttle
from services.stores.users import UserTable
from services.web.app import create_service_app
from services.web.cors import enable_cors
from services.web.oidc import OidcDeps, create_authorization_server

from .shares import PIN_LIMIT as SHARE_PIN_LIMIT
from .shares import PIN_WINDOW as SHARE_PIN_WINDOW
from .signin import SignIn

# Sign-in throttling (signin.py's SignIn says how the counters work). Failures of one
# username from one client address slow that pair's next answers down by the step per
# failure, up to the maximum (seconds); an address (a clinic behind one NAT address
# shares it) failing the limit within the window (seconds) is refused with 429.
DEFAULT_LIMITS: dict[str, int | float] = {
    "LOGIN_ADDRESS_FAILURE_LIMIT": 20,
    "LOGIN_FAILURE_WINDOW": 900,
    "LOGIN_SLOWDOWN_STEP": SLOWDOWN_STEP_SECONDS,
    "LOGIN_SLOWDOWN_MAX": MAX_SLOWDOWN_SECONDS,
}

# Unknown device codes one address may try within the sign-in window before a 429.
DEVICE_CODE_FAILURE_LIMIT = 10

csrf = CSRFProtect()


def _limits(config: dict[str, Any] | None) -> dict[str, int | float]:
    """DEFAULT_LIMITS with the config's values, each a positive number of the default's type."""
    limits: dict[str, int | float] = {}
    for name, default in DEFAULT_LIMITS.items():
        raw = (config or {}).get(name, default)
        try:
            value = type(default)(raw)
        except (TypeError, ValueError):
            value = 0
        if isinstance(raw, bool) or not (0 < value < math.inf):
            kind = "whole number" if isinstance(default, int) else "number"
            raise SettingsError(f"{name} must be a positive {kind}, got {raw!r}")
        limits[name] = value
    return limits


def create_app(config: dict[str, Any] | None = None) -> Flask:
    limits = _limits(config)  # first: a bad value stops start-up before any connection opens
    app = create_service_app(__name__, "login", config, database=UserTable, can_sign=True)
    app.config.update(limits)

    res = app.extensions["zhiva"]
    prefix = res.settings.redis_key_prefix
    window = int(limits["LOGIN_FAILURE_WINDOW"])
    app.extensions["zhiva_sign_in"] = SignIn(
        users=res.db,
        pair_throttle=Throttle(res.redis, prefix, "login-pair", limit=None, window=window),
        address_throttle=Throttle(
            res.redis,
            prefix,
            "login-addr",
            limit=int(limits["LOGIN_ADDRESS_FAILURE_LIMIT"]),
            window=window,
        ),
        slowdown_step=float(limits["LOGIN_SLOWDOWN_STEP"]),
        slowdown_max=float(limits["LOGIN_SLOWDOWN_MAX"]),
    )

    app.extensions["zhiva_device_throttle"] = Throttle(
        res.redis, prefix, "device-addr", limit=DEVICE_CODE_FAILURE_LIMIT, window=window
    )
    # Share links' page (shares.py): the shares table, and wrong PINs counted per share.
    app.extensions["zhiva_shares"] = ShareTable(res.settings.database_url)
    app.extensions["zhiva_share_pin_throttle"] = Throttle(
        res.redis, prefix, "share-pin", limit=SHARE_PIN_LIMIT, window=SHARE_PIN_WINDOW
    )
    deps = OidcDeps(
        settings=res.settings,
        codec=res.codec,
        state=OidcState(res.redis, prefix, res.revocations),
        clients=ClientTable(res.settings.database_url),
        users=res.db,
        revocations=res.revocations,
    )

    from .provider import blueprint as provider_blueprint
    from .provider import browser_session
    from .routes import blueprint, sign_user
    from .shares import blueprint as shares_blueprint

    create_authorization_server(app, deps, browser_session)
    csrf.init_app(app)
    # The JSON path carries no cookie authority (the body holds the credentials) and
    # accepts only application/json, which a cross-site form cannot send without a
    # CORS preflight that only allowed origins pass.
    csrf.exempt(sign_user)
    app.register_blueprint(blueprint)
    app.register_blueprint(provider_blueprint)
    app.register_blueprint(shares_blueprint)
    enable_cors(app, res.origins, ("/auth/sign-user",))
    return app
