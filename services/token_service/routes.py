"""Routes of the token service: the admin page and the token API.

Thin: parse the request, call `grants`, shape the response. Token errors
become 401/403 and a down Redis 503 in `services.web.app`; `GrantRefused`
becomes its status here.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any

from flask import (
    Blueprint,
    Response,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import IntegrityError

from services.domain.names import normalise_name, normalise_username
from services.stores.accounts import find_user
from services.stores.revocation import StoreUnavailable
from services.web.app import error, log, resources

from . import grants
from .forms import ConfirmForm, DetailsForm
from .openapi import SPEC as OPENAPI_SPEC

blueprint = Blueprint(
    "token",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/auth/static/token",
)

# The page paths (HTML); everything else here answers JSON.
PAGE_ENDPOINTS = {
    "token.token_page",
    "token.token_submit",
    "token.confirm_page",
    "token.confirm_submit",
}
# How long a checked admin password carries the page from step 1 to step 2.
PENDING_SECONDS = 10 * 60
REQUEST_EXPIRED = "That request has expired; please start again."
REQUEST_USED = "That request was already used; please start again."
USER_CREATED_MEANWHILE = "That user was created meanwhile; please start again."
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def _client() -> str:
    # ProxyFix has already replaced this with the address nginx saw.
    return request.remote_addr or "unknown"


@blueprint.after_app_request
def _security_headers(response: Response) -> Response:
    if request.endpoint in PAGE_ENDPOINTS:
        response.headers["Content-Security-Policy"] = PAGE_CSP
        response.headers["X-Frame-Options"] = "DENY"
        # same-origin, not no-referrer: a same-origin form post keeps its Referer.
        response.headers["Referrer-Policy"] = "same-origin"
    if (
        request.blueprint == "token"
        and request.endpoint not in ("token.jwks", "token.openapi")
        and not (request.endpoint or "").endswith("static")
    ):
        # Pages and answers here carry passwords' results and tokens: never cache them.
        response.headers["Cache-Control"] = "no-store"
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


@blueprint.errorhandler(grants.GrantRefused)
def _refused(exc: grants.GrantRefused):  # type: ignore[no-untyped-def]
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return error(exc.message, exc.status, headers)


@blueprint.errorhandler(CSRFError)
def _csrf_error(exc: CSRFError):  # type: ignore[no-untyped-def]
    return _render_details(
        DetailsForm(formdata=None),
        "The form expired or was not sent by this page; please fill it in again.",
        400,
    )


@blueprint.get("/auth/.well-known/jwks.json")
def jwks():  # type: ignore[no-untyped-def]
    response = jsonify(resources().codec.jwks())
    response.headers["Cache-Control"] = "public, max-age=300"
    # Public keys: an OpenID Connect client on any origin fetches them.
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


@blueprint.get("/auth/openapi.json")
def openapi():  # type: ignore[no-untyped-def]
    """The OpenAPI description of the public endpoints (user documentation)."""
    response = jsonify(OPENAPI_SPEC)
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


# ---------------------------------------------------------------- the admin page


def _render(template_step: str, status: int = 200, **context: Any) -> Response:
    return make_response(render_template("token.html", step=template_step, **context), status)


def _render_details(
    form: DetailsForm,
    message: str | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    response = _render("details", status, form=form, message=message)
    response.headers.update(headers or {})
    return response


def _pending() -> dict[str, Any] | None:
    pending = session.get("pending")
    if not isinstance(pending, dict):
        return None
    started = pending.get("verified_at")
    if not isinstance(started, int | float) or time.time() - started > PENDING_SECONDS:
        session.pop("pending", None)
        return None
    return pending


@blueprint.get("/auth/token")
def token_page():  # type: ignore[no-untyped-def]
    # Coming back to the first step (or "Cancel") forgets a half-done request.
    session.pop("pending", None)
    return _render_details(DetailsForm(formdata=None))


@blueprint.post("/auth/token")
def token_submit():  # type: ignore[no-untyped-def]
    form = DetailsForm()
    if not form.validate():
        return _render_details(form, status=400)
    res = resources()
    try:
        grants.check_admin_password(
            res.settings, grants.admin_throttle(res), _client(), form.admin_password.data or ""
        )
        with res.db.session() as db:
            user = find_user(db, form.username.data or "")
            exists, disabled = user is not None, bool(user and user.disabled)
    except grants.GrantRefused as refused:
        headers = {"Retry-After": str(refused.retry_after)} if refused.retry_after else None
        return _render_details(form, refused.message, refused.status, headers)
    except StoreUnavailable as down:
        log.error("redis unavailable on the token page")
        return _render_details(form, str(down), 503, {"Retry-After": "5"})
    if disabled:
        return _render_details(
            form, f"{grants.USER_DISABLED}: enable it first (zhiva-admin enable-user).", 400
        )
    session["pending"] = {
        "name": normalise_name(form.name.data),
        "username": normalise_username(form.username.data),
        "can_edit": bool(form.can_edit.data),
        "exists": exists,
        "verified_at": int(time.time()),
        # Makes the request single-use even against a replayed copy of the session cookie.
        "nonce": secrets.token_urlsafe(16),
    }
    return redirect(url_for("token.confirm_page"), 303)


@blueprint.get("/auth/token/confirm")
def confirm_page():  # type: ignore[no-untyped-def]
    pending = _pending()
    if pending is None:
        return redirect(url_for("token.token_page"), 303)
    return _render("confirm", form=ConfirmForm(formdata=None), pending=pending)


@blueprint.post("/auth/token/confirm")
def confirm_submit():  # type: ignore[no-untyped-def]
    pending = _pending()
    if pending is None:
        return _render_details(DetailsForm(formdata=None), REQUEST_EXPIRED, 400)
    form = ConfirmForm()
    if not form.validate():
        return _render("confirm", 400, form=form, pending=pending)
    res = resources()
    # The refusals are handled outside the transaction, so it rolls back: a refused or
    # replayed confirmation must neither change the user nor revoke its tokens.
    try:
        with res.db.session() as db:
            exists_now = find_user(db, pending["username"]) is not None
            if exists_now != pending["exists"]:
                # Someone created or removed the user meanwhile: confirm again, knowingly.
                pending["exists"] = exists_now
                session["pending"] = pending
                return _render(
                    "confirm",
                    409,
                    form=ConfirmForm(formdata=None),
                    pending=pending,
                    message="The user changed meanwhile; please confirm again.",
                )
            token, claims = grants.save_user_and_issue(
                db,
                res,
                name=pending["name"],
                username=pending["username"],
                password=form.user_password.data or "",
                can_edit=pending["can_edit"],
            )
            # Last, so a refusal above leaves the request usable; losing here rolls back.
            if not res.revocations.redeem_once(
                f"token-page:{pending.get('nonce')}", pending["verified_at"] + PENDING_SECONDS
            ):
                raise grants.GrantRefused(REQUEST_USED)
    except grants.GrantRefused as refused:
        if refused.message == REQUEST_USED:
            session.pop("pending", None)
            return _render_details(DetailsForm(formdata=None), REQUEST_USED, 400)
        return _render(
            "confirm", refused.status, form=form, pending=pending, message=refused.message
        )
    except StoreUnavailable as down:
        log.error("redis unavailable on the token page")
        return _render("confirm", 503, form=form, pending=pending, message=str(down))
    except IntegrityError:
        # Created by another request between the look-up and our insert; this request's
        # nonce is spent, so it starts over and will be asked to confirm overwriting.
        session.pop("pending", None)
        return _render_details(DetailsForm(formdata=None), USER_CREATED_MEANWHILE, 409)
    session.pop("pending", None)
    expires = datetime.fromtimestamp(claims["exp"], UTC)
    return _render(
        "token",
        token=token,
        pending=pending,
        expires_at=expires.strftime("%Y-%m-%d %H:%M UTC"),
        expires_iso=expires.isoformat(),
        lifetime=_duration(claims["exp"] - claims["iat"]),
    )


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return f"{hours} hour" + ("s" if hours != 1 else "")
    minutes = max(1, seconds // 60)
    return f"{minutes} minute" + ("s" if minutes != 1 else "")


@blueprint.app_template_global()
def aria_attrs(field: Any, *described_by: str) -> dict[str, str]:
    """ARIA attributes tying a form field to its help text and its errors."""
    ids = list(described_by) + ([f"{field.id}-errors"] if field.errors else [])
    attrs = {"aria-describedby": " ".join(ids)} if ids else {}
    if field.errors:
        attrs["aria-invalid"] = "true"
    return attrs


# ------------------------------------------------------------------ the JSON API

_TRUE = {"true", "on", "1", "yes"}
_FALSE = {"false", "off", "0", "no", ""}


def _flag(value: object) -> bool | None:
    """A JSON boolean, or the string spellings forms and scripts send; None when it is neither."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    return None


@blueprint.post("/auth/generate-token")
def generate_token():  # type: ignore[no-untyped-def]
    """The seed's JSON API: create or overwrite a user and answer its one-off auth token."""
    res = resources()
    origin = request.headers.get("Origin")
    # Not CSRF-protected (scripts use it), so a browser may only call it from an allowed origin.
    if origin is not None and not res.origins.allows(origin):
        return error(grants.ORIGIN_NOT_ALLOWED, 403)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return error(grants.INVALID_DATA, 400)
    name, username = normalise_name(body.get("name")), normalise_username(body.get("username"))
    if name is None:
        return error(grants.NAME_NOT_VALID, 400)
    if username is None:
        return error(grants.USERNAME_NOT_VALID, 400)
    password = body.get("password")
    can_edit = _flag(body.get("canEditResource"))
    create = _flag(body.get("createUserIfNotExists"))
    user_password = body.get("userPassword")
    if (
        not isinstance(password, str)
        or not password
        or can_edit is None
        or create is None
        or not isinstance(user_password, str | None)
    ):
        return error(grants.INVALID_DATA, 400)

    grants.check_admin_password(res.settings, grants.admin_throttle(res), _client(), password)
    # Two calls creating one new username race between the look-up and the insert;
    # the loser's unique-key error is retried once, and then finds the user to overwrite.
    for attempt in range(2):
        try:
            with res.db.session() as db:
                user = find_user(db, username)
                if not create:
                    missing = grants.USER_EXISTS if user is not None else grants.USER_MISSING
                    return error(missing, 400)
                token, _claims = grants.save_user_and_issue(
                    db,
                    res,
                    name=name,
                    username=username,
                    password=user_password or "",
                    can_edit=can_edit,
                )
            break
        except IntegrityError:
            if attempt:
                raise
    return jsonify(token=token)


@blueprint.post("/auth/generate-access-token")
def generate_access_token():  # type: ignore[no-untyped-def]
    """Redeem a one-off auth token: access token in the header, refresh token as the body."""
    res = resources()
    token = grants.bearer_token(request.headers.get("Authorization"))
    with res.db.session() as db:
        grant = grants.redeem_auth_token(
            db, res.codec, res.revocations, res.origins, token, request.headers.get("Origin")
        )
    response = make_response(grant.refresh_token or "", 200)
    response.mimetype = "text/plain"
    response.headers["Authorization"] = f"Bearer {grant.access_token}"
    return response


@blueprint.post("/auth/refresh-token")
def refresh_token():  # type: ignore[no-untyped-def]
    """A new access token, in the `Authorization` header, for a refresh token."""
    res = resources()
    token = grants.bearer_token(request.headers.get("Authorization"))
    with res.db.session() as db:
        grant = grants.refresh_access_token(
            db, res.codec, res.revocations, res.origins, token, request.headers.get("Origin")
        )
    response = make_response("", 200)
    response.mimetype = "text/plain"
    response.headers["Authorization"] = f"Bearer {grant.access_token}"
    return response


API_PATHS = ("/auth/generate-token", "/auth/generate-access-token", "/auth/refresh-token")
API_VIEWS = (generate_token, generate_access_token, refresh_token)
