"""The login service: /auth/sign-in, which sends the viewer back with a one-off auth token.

It only reads users, through the database driver (services/shared/users.py),
so no login process loads SQLAlchemy (issue 6: memory;
tests/test_policy_users.py checks it stays so).
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from services.shared.cors import enable_cors
from services.shared.throttle import Throttle
from services.shared.users import UserTable
from services.shared.web import create_service_app

from .signin import SignIn

# Failed sign-ins allowed per username, and per client address (a clinic behind one
# NAT address shares the second), within the window, before 429.
DEFAULT_LIMITS = {
    "LOGIN_USER_FAILURE_LIMIT": 5,
    "LOGIN_ADDRESS_FAILURE_LIMIT": 20,
    "LOGIN_FAILURE_WINDOW": 900,
}

csrf = CSRFProtect()


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = create_service_app(__name__, "login", config, database=UserTable, can_sign=True)
    limits = {
        name: int((config or {}).get(name, default)) for name, default in DEFAULT_LIMITS.items()
    }
    app.config.update(limits)

    res = app.extensions["zhiva"]
    prefix = res.settings.redis_key_prefix
    window = limits["LOGIN_FAILURE_WINDOW"]
    app.extensions["zhiva_sign_in"] = SignIn(
        users=res.db,
        user_throttle=Throttle(
            res.redis, prefix, "login-user", limit=limits["LOGIN_USER_FAILURE_LIMIT"], window=window
        ),
        address_throttle=Throttle(
            res.redis,
            prefix,
            "login-addr",
            limit=limits["LOGIN_ADDRESS_FAILURE_LIMIT"],
            window=window,
        ),
    )

    from .routes import blueprint, sign_user

    csrf.init_app(app)
    # The JSON path carries no cookie authority (the body holds the credentials) and
    # accepts only application/json, which a cross-site form cannot send without a
    # CORS preflight that only allowed origins pass.
    csrf.exempt(sign_user)
    app.register_blueprint(blueprint)
    enable_cors(app, res.origins, ("/auth/sign-user",))
    return app
