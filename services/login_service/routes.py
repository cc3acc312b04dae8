"""Routes of the login service: parse the request, shape the answer.

The decisions live in `signin.py`; this module turns its errors into HTML
pages (the browser flow) or the `{"message": …}` JSON shape (the API).
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, jsonify, redirect, request
from flask_wtf.csrf import CSRFError
from werkzeug.wrappers import Response as BaseResponse

from services.domain.auth_tokens import issue_auth_token
from services.stores.revocation import StoreUnavailable
from services.web.app import error, resources

from .forms import SignInForm
from .pages import page
from .signin import (
    BadResponseType,
    BadReturnUri,
    ReturnUri,
    SignIn,
    SignInError,
    SignInFailed,
    TooManyAttempts,
    check_return_uri,
    parse_response_type,
    redirect_location,
)

log = logging.getLogger("zhiva.login")

blueprint = Blueprint(
    "login",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/auth/static/login",
)

STORE_DOWN_MESSAGE = (
    "Sign-in is unavailable right now: the token store does not answer. "
    "Try again in a moment; if it persists, ask the administrator to run `make status`."
)
INVALID_DATA = "Invalid data"
CSRF_NO_FORM_MESSAGE = (
    "This form expired or was not sent by this site. Open the sign-in link again."
)


def _sign_in() -> SignIn:
    return current_app.extensions["zhiva_sign_in"]


def _page(template: str, status: int, return_uri: ReturnUri | None = None, **context) -> Response:  # type: ignore[no-untyped-def]
    # The form may only be sent to us, and (after the redirect) reach the checked viewer origin.
    return page(template, status, return_uri.audience if return_uri else None, **context)


def _form_page(
    form: SignInForm, return_uri: ReturnUri, status: int = 200, message: str | None = None
) -> Response:
    return _page(
        "sign_in.html",
        status,
        return_uri,
        form=form,
        message=message,
        viewer_origin=return_uri.audience,
    )


def _error_page(message: str, status: int, detail: str | None = None) -> Response:
    return _page("error.html", status, message=message, detail=detail)


@blueprint.get("/auth/sign-in")
def sign_in_page() -> Response:
    return_uri = check_return_uri(request.args.get("return_uri"), resources().origins)
    response_type = request.args.get("response_type", "")
    parse_response_type(response_type)
    form = SignInForm(formdata=None, return_uri=return_uri.url, response_type=response_type)
    return _form_page(form, return_uri)


@blueprint.post("/auth/sign-in")
def sign_in() -> BaseResponse:
    form = SignInForm()
    return_uri = check_return_uri(form.return_uri.data, resources().origins)
    return_params = parse_response_type(form.response_type.data)
    if not form.validate():
        # The CSRF token was checked before the view ran; what is left is the fields.
        return _form_page(form, return_uri, 400, "Enter your username and password.")
    try:
        who = _sign_in().authenticate(form.username.data, form.password.data, request.remote_addr)
    except SignInFailed as failure:
        log.info("sign-in refused from %s", request.remote_addr)
        return _form_page(_fresh(form), return_uri, 400, str(failure))
    except TooManyAttempts as blocked:
        log.warning("sign-in throttled from %s", request.remote_addr)
        response = _form_page(_fresh(form), return_uri, 429, str(blocked))
        response.headers["Retry-After"] = str(blocked.retry_after)
        return response
    res = resources()
    token, _claims = issue_auth_token(res.codec, res.settings, who, audience=return_uri.audience)
    log.info("user %s signed in for %s", who.username, return_uri.audience)
    redirected = redirect(redirect_location(return_uri, token, return_params), code=302)
    redirected.headers["Cache-Control"] = "no-store"
    return redirected


def _fresh(form: SignInForm) -> SignInForm:
    """The same form with the password emptied, so it is never written back into the page."""
    form.password.data = ""
    return form


@blueprint.post("/auth/sign-user")
def sign_user() -> Response:
    body = request.get_json(silent=True) if request.is_json else None
    if not isinstance(body, dict):
        return error(INVALID_DATA, 400)
    username, password = body.get("username"), body.get("password")
    if not (isinstance(username, str) and isinstance(password, str) and username and password):
        return error(INVALID_DATA, 400)
    try:
        return_uri = check_return_uri(body.get("referer"), resources().origins)
    except BadReturnUri:
        return error(INVALID_DATA, 400)
    try:
        who = _sign_in().authenticate(username, password, request.remote_addr)
    except SignInFailed:
        log.info("sign-user refused from %s", request.remote_addr)
        return error(INVALID_DATA, 400)
    except TooManyAttempts as blocked:
        log.warning("sign-user throttled from %s", request.remote_addr)
        return error(str(blocked), 429, {"Retry-After": str(blocked.retry_after)})
    res = resources()
    token, _claims = issue_auth_token(res.codec, res.settings, who, audience=return_uri.audience)
    answer = jsonify(token=token)
    answer.headers["Cache-Control"] = "no-store"
    return answer


@blueprint.errorhandler(BadReturnUri)
def _bad_return_uri(exc: BadReturnUri) -> Response:
    log.info("sign-in link refused: return address missing or not allowed")
    detail = None
    if exc.origin is not None:
        detail = (
            f"{exc.origin} is not an allowed origin. An administrator can add it to "
            "ALLOWED_ORIGINS in the server's .env file."
        )
    return _error_page(str(exc), 400, detail)


@blueprint.errorhandler(BadResponseType)
def _bad_response_type(exc: SignInError) -> Response:
    return _error_page(str(exc), 400)


@blueprint.errorhandler(StoreUnavailable)
def _store_down(exc: StoreUnavailable) -> Response:
    log.error("redis unavailable on %s %s", request.method, request.path)
    if request.endpoint == "login.sign_user":
        return error(STORE_DOWN_MESSAGE, 503, {"Retry-After": "5"})
    response = _error_page(STORE_DOWN_MESSAGE, 503)
    response.headers["Retry-After"] = "5"
    return response


@blueprint.app_errorhandler(CSRFError)
def _csrf_failed(exc: CSRFError) -> Response:
    """An expired or missing CSRF token: show the form again with a fresh one."""
    log.info("CSRF check failed on %s: %s", request.path, exc.description)
    try:
        return_uri = check_return_uri(request.form.get("return_uri"), resources().origins)
        response_type = request.form.get("response_type", "")
        parse_response_type(response_type)
    except SignInError:
        return _error_page(CSRF_NO_FORM_MESSAGE, 400)
    form = SignInForm(formdata=None, return_uri=return_uri.url, response_type=response_type)
    return _form_page(form, return_uri, 400, "This form expired. Please sign in again.")
