"""The OpenID Connect provider's browser pages: authorize, logout, device approval.

They sit with sign-in because they share its form, its throttles and its look.
The protocol is services/web/oidc.py's; here are the provider's browser session
(a `__Host-` cookie naming a record in Redis) and the pages.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, Response, current_app, g, redirect, request
from werkzeug.wrappers import Response as BaseResponse

from services.domain.origins import parse_origin
from services.stores.oidc_state import OidcState
from services.stores.throttle import Throttle, address_key
from services.web.oidc import (
    SESSION_COOKIE,
    OAuth2Error,
    Subject,
    ZhivaAuthorizationServer,
    end_browser_session,
)

from .forms import ConfirmForm, CredentialsForm, DeviceCodeForm
from .pages import page
from .signin import SignIn, SignInFailed, TooManyAttempts

log = logging.getLogger("zhiva.login")

blueprint = Blueprint("provider", __name__, template_folder="templates")

AUTHORIZE_PATH = "/auth/oauth/authorize"
LOGOUT_PATH = "/auth/oauth/logout"
DEVICE_VERIFY_PATH = "/auth/oauth/device/verify"
UNKNOWN_CODE = "That code is unknown or has expired. Check it on the device and try again."
DEVICE_THROTTLED = "Too many unknown codes from this network address. Try again later."


def _server() -> ZhivaAuthorizationServer:
    return current_app.extensions["zhiva_oidc"]


def _state() -> OidcState:
    return _server().deps.state


def _action() -> str:
    """This request's own path and query: a form posts back to what it was shown for."""
    query = request.query_string.decode("ascii", "replace")
    return request.path + (f"?{query}" if query else "")


def _page(
    template: str, status: int = 200, redirect_origin: str | None = None, **context: Any
) -> Response:
    return page(template, status, redirect_origin, **context)


def _message(title: str, message: str, status: int = 200, *, error: bool = False) -> Response:
    return _page("provider_page.html", status, title=title, message=message, error=error)


# --- the provider's browser session ------------------------------------------------------


def browser_session() -> dict[str, Any] | None:
    """This browser's provider session when its user is still the one who signed in
    (enabled, same token generation, same account); any other is ended here."""
    if "zhiva_session" in g:
        return g.zhiva_session
    found: dict[str, Any] | None = None
    session_id = request.cookies.get(SESSION_COOKIE, "")
    if 20 <= len(session_id) <= 100:
        record = _state().session(session_id)
        if record is not None:
            user = _server().deps.users.find(record["username"])
            if (
                user is not None
                and not user.disabled
                and str(user.token_generation) == str(record["generation"])
                and user.subject == record["subject"]
            ):
                found = {**record, "session_id": session_id, "user": user}
            else:
                end_browser_session(_server().deps, session_id)
    g.zhiva_session = found
    return found


def _session_subject(session: dict[str, Any]) -> Subject:
    return Subject.of(
        session["user"],
        family="",
        family_expires_at=0,
        auth_time=int(session["auth_time"]),
        session_id=session["session_id"],
    )


def _start_session(response: BaseResponse, subject: Subject) -> None:
    lifetime = _server().deps.settings.oidc_session_lifetime
    response.set_cookie(
        SESSION_COOKIE,
        subject.session_id,
        max_age=lifetime,
        path="/",
        secure=True,
        httponly=True,
        samesite="Lax",
    )


def _clear_session(response: BaseResponse) -> None:
    response.set_cookie(
        SESSION_COOKIE, "", max_age=0, path="/", secure=True, httponly=True, samesite="Lax"
    )


def _sign_in(form: CredentialsForm) -> Subject:
    """Check the form's credentials (SignInFailed, TooManyAttempts) and open a session."""
    sign_in: SignIn = current_app.extensions["zhiva_sign_in"]
    user = sign_in.authenticate(form.username.data, form.password.data, request.remote_addr)
    now = int(time.time())
    session_id = _state().create_session(
        {
            "username": user.username,
            "subject": user.subject,
            "generation": user.token_generation,
            "auth_time": now,
        },
        _server().deps.settings.oidc_session_lifetime,
    )
    log.info("user %s signed in at the OpenID Connect provider", user.username)
    return Subject.of(user, family="", family_expires_at=0, auth_time=now, session_id=session_id)


def _sign_in_page(
    form: CredentialsForm,
    client_name: str,
    redirect_origin: str | None,
    status: int = 200,
    message: str | None = None,
) -> Response:
    form.password.data = ""
    return _page(
        "provider_sign_in.html",
        status,
        redirect_origin,
        form=form,
        action=_action(),
        client_name=client_name,
        message=message,
    )


def _checked_sign_in(
    form: CredentialsForm, client_name: str, redirect_origin: str | None
) -> Subject | Response:
    """The signed-in subject, or the form again with why not."""
    if not form.validate():
        return _sign_in_page(
            form, client_name, redirect_origin, 400, "Enter your username and password."
        )
    try:
        return _sign_in(form)
    except SignInFailed as failure:
        log.info("provider sign-in refused from %s", request.remote_addr)
        return _sign_in_page(form, client_name, redirect_origin, 400, str(failure))
    except TooManyAttempts as blocked:
        log.warning("provider sign-in throttled from %s", request.remote_addr)
        response = _sign_in_page(form, client_name, redirect_origin, 429, str(blocked))
        response.headers["Retry-After"] = str(blocked.retry_after)
        return response


# --- authorize -----------------------------------------------------------------------------


def _oauth_error_page(error: OAuth2Error) -> Response:
    """An error that may not go back to the client (its redirect_uri is unchecked)."""
    log.info("authorization request refused: %s", error.error)
    return _message("Cannot sign in", error.description or error.error, 400, error=True)


def _max_age_passed(session: dict[str, Any]) -> bool:
    raw = request.values.get("max_age")
    if raw is None:
        return False
    try:
        max_age = int(raw)
    except ValueError:
        return True  # not a number: ask again rather than guess
    return time.time() - int(session["auth_time"]) > max_age


@blueprint.route(AUTHORIZE_PATH, methods=["GET", "POST"])
def authorize() -> BaseResponse:
    server = _server()
    session = browser_session()
    subject = _session_subject(session) if session and request.method == "GET" else None
    try:
        grant = server.get_consent_grant(end_user=subject)
    except OAuth2Error as error:
        if error.redirect_uri:
            return _no_store(server.handle_error_response(None, error))
        return _oauth_error_page(error)
    redirect_uri = grant.request.payload.redirect_uri
    origin = parse_origin(redirect_uri)
    redirect_origin = str(origin) if origin else None
    client_name = grant.request.client.get_client_id()

    if request.method == "GET":
        if subject is not None and grant.prompt != "login" and not _max_age_passed(session or {}):
            return _issue(server, grant, subject)
        return _sign_in_page(CredentialsForm(formdata=None), client_name, redirect_origin)

    signed_in = _checked_sign_in(CredentialsForm(), client_name, redirect_origin)
    if isinstance(signed_in, Response):
        return signed_in
    response = _issue(server, grant, signed_in)
    _start_session(response, signed_in)
    return response


def _issue(server: ZhivaAuthorizationServer, grant: Any, subject: Subject) -> BaseResponse:
    response = server.create_authorization_response(grant_user=subject, grant=grant)
    return _no_store(response)


def _no_store(response: BaseResponse) -> BaseResponse:
    response.headers["Cache-Control"] = "no-store"
    return response


# --- logout --------------------------------------------------------------------------------


@blueprint.route(LOGOUT_PATH, methods=["GET", "POST"])
def logout() -> BaseResponse:
    server = _server()
    try:
        validated = server.validate_endpoint_request("end_session")
    except OAuth2Error as error:
        log.info("logout request refused: %s", error.error)
        return _message("Cannot sign out", error.description or error.error, 400, error=True)
    if validated.needs_confirmation and request.method == "GET":
        # No hint we trust: a link alone must not sign anyone out (a CSRF form does).
        return _page(
            "provider_page.html",
            title="Sign out?",
            message="Sign out of zhiva PACS in this browser?",
            form=ConfirmForm(formdata=None),
            action=_action(),
            choices=[("sign-out", "Sign out")],
        )
    response = server.create_endpoint_response("end_session", validated)
    if response is None:
        response = _message("Signed out", "You are signed out of zhiva PACS in this browser.")
    _clear_session(response)
    return _no_store(response)


# --- device approval -----------------------------------------------------------------------


def _device_throttle() -> Throttle:
    return current_app.extensions["zhiva_device_throttle"]


@blueprint.route(DEVICE_VERIFY_PATH, methods=["GET", "POST"])
def device_verify() -> BaseResponse:
    session = browser_session()
    if session is None:
        if request.method == "GET" or request.form.get("step") not in (None, "sign-in"):
            return _sign_in_page(CredentialsForm(formdata=None), "a device", None)
        signed_in = _checked_sign_in(CredentialsForm(), "a device", None)
        if isinstance(signed_in, Response):
            return signed_in
        # Back to the same page, now with a session: the code is asked for next.
        response = redirect(_action(), code=303)
        _start_session(response, signed_in)
        return _no_store(response)

    username = session["username"]
    if request.method == "GET":
        # A pre-filled code (verification_uri_complete) is only shown: nothing is
        # approved before the user presses a button.
        form = DeviceCodeForm(formdata=None, user_code=request.args.get("user_code", ""))
        return _page("device_code.html", form=form, action=_action(), username=username)

    if request.form.get("step") == "lookup":
        form = DeviceCodeForm()
        address = address_key(request.remote_addr)
        wait = _device_throttle().retry_after(address)
        if wait:
            response = _page(
                "device_code.html",
                429,
                form=form,
                action=_action(),
                username=username,
                message=DEVICE_THROTTLED,
            )
            response.headers["Retry-After"] = str(wait)
            return response
        record = (
            _state().device_by_user_code(form.user_code.data or "") if form.validate() else None
        )
        if record is None:
            _device_throttle().failed(address)
            return _page(
                "device_code.html",
                400,
                form=form,
                action=_action(),
                username=username,
                message=UNKNOWN_CODE,
            )
        return _page(
            "provider_page.html",
            title="Connect this device?",
            message="A program asks to read the PACS as you.",
            details=[
                ("Client", record["client_id"]),
                ("Access", record.get("scope") or "-"),
                ("Signed in as", username),
            ],
            form=ConfirmForm(formdata=None, user_code=form.user_code.data),
            action=_action(),
            choices=[("approve", "Approve"), ("deny", "Deny")],
        )

    confirm = ConfirmForm()
    choice = request.form.get("choice")
    if choice not in ("approve", "deny") or not confirm.validate() or not confirm.user_code.data:
        return _message(
            "Connect a device", "Start again from the code the device shows.", 400, error=True
        )
    grant = {
        "username": username,
        "subject": session["subject"],
        "generation": session["generation"],
        "auth_time": session["auth_time"],
    }
    changed = _state().decide_device(confirm.user_code.data, choice == "approve", grant)
    if not changed:
        return _message("Connect a device", UNKNOWN_CODE, 400, error=True)
    log.info("device code %s by %s", "approved" if choice == "approve" else "denied", username)
    if choice == "approve":
        return _message(
            "Device connected", "You can close this page; the device continues on its own."
        )
    return _message("Device refused", "The device was not given access.")
