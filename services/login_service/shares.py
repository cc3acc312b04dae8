"""The share link's page, `/auth/share/<id>`: it opens the viewer on the shared study.

A share (services/domain/shares.py) is made by the token service's API or the CLI;
its link lands here. An unknown link is a 404 page; a revoked or expired one a 410.
A link without a PIN sends the browser on at once (303) to the viewer in share mode
(infra/viewer.py: `/viewer/share/`, no sign-in), with a share token minted now (same
`jti`, the share's id, so revoking the share revokes every token its link gave). A
link with a PIN first asks for it in a small CSRF-protected form; wrong PINs count
against the share, whoever sends them, and the fifth within a day locks it for the
rest of that day (429), so a short PIN cannot be guessed through the page.

The share is read through the driver (services/stores/share_table.py): no SQLAlchemy
in this service. Log lines name the share id, never a token or a PIN.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, request
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError
from werkzeug.wrappers import Response as BaseResponse
from wtforms import PasswordField
from wtforms.validators import InputRequired, Length

from services.domain.passwords import check_password
from services.domain.shares import ShareRecord, issue_share_token
from services.stores.revocation import StoreUnavailable
from services.stores.share_table import ShareTable
from services.stores.throttle import Throttle
from services.web.app import resources

from .pages import page

log = logging.getLogger("zhiva.login")

blueprint = Blueprint("shares", __name__, template_folder="templates")

SHARE_PATH = "/auth/share/"
# The viewer's share entry (infra/viewer.py, SHARE_ROUTER_BASENAME) and OHIF's route there;
# OHIF sends `token` as a bearer token and takes it out of the address bar.
VIEWER_SHARE_ROUTE = "/viewer/share/viewer"
# Wrong PINs of one share, from anyone, within PIN_WINDOW seconds: the PIN_LIMIT-th locks it.
PIN_LIMIT = 5
PIN_WINDOW = 24 * 3600

UNKNOWN = "This link is unknown. Check that it was copied whole, or ask for a new one."
REVOKED = "This link was revoked by whoever shared it. Ask them for a new one if you still need it."
EXPIRED = "This link has expired. Ask whoever shared it for a new one."
WRONG_PIN = "Wrong PIN."
ENTER_PIN = "Enter the PIN you were given with the link."
FORM_EXPIRED = "This form expired. Enter the PIN again."
STORE_DOWN = (
    "The server cannot open shared studies right now. Try again in a moment; if it persists, "
    "tell whoever shared the link."
)


class PinForm(FlaskForm):
    pin = PasswordField(
        "PIN",
        # Longer cannot be a PIN (services/domain/shares.py: 4 to 12 digits).
        validators=[InputRequired(), Length(max=64)],
        render_kw={"inputmode": "numeric", "autocomplete": "off", "autocapitalize": "none"},
    )


def _shares() -> ShareTable:
    table: ShareTable = current_app.extensions["zhiva_shares"]
    return table


def _pin_throttle() -> Throttle:
    throttle: Throttle = current_app.extensions["zhiva_share_pin_throttle"]
    return throttle


def _page(template: str, status: int, **context: Any) -> Response:
    response = page(template, status, **context)
    # The page's address is the link: a capability, not for another site's logs.
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _message(title: str, message: str, status: int) -> Response:
    return _page("share_message.html", status, title=title, message=message)


def _pin_page(
    share: ShareRecord, form: PinForm, status: int = 200, message: str | None = None
) -> Response:
    return _page(
        "share_pin.html",
        status,
        form=form,
        message=message,
        action=SHARE_PATH + share.id,
        pin_limit=PIN_LIMIT,
    )


def _locked(wait: int) -> Response:
    hours = max(1, round(wait / 3600))
    response = _message(
        "Link locked",
        f"Too many wrong PINs were entered for this link ({PIN_LIMIT}), so it is locked for "
        f"about {hours} hour{'s' if hours != 1 else ''}. Ask whoever shared it for a new link "
        "if you cannot wait.",
        429,
    )
    response.headers["Retry-After"] = str(wait)
    return response


def _share(share_id: str) -> ShareRecord | Response:
    """The share when its link may open; else the page that says why."""
    table = _shares()
    try:
        share = table.find(share_id)
    except table.unavailable:
        log.error("database unavailable on the share link page")
        return _message("Cannot open this link", STORE_DOWN, 503)
    if share is None:
        log.info("share link refused: unknown")
        return _message("Link not found", UNKNOWN, 404)
    if share.revoked:
        log.info("share %s refused: revoked", share.id)
        return _message("Link revoked", REVOKED, 410)
    if not share.usable():
        log.info("share %s refused: expired", share.id)
        return _message("Link expired", EXPIRED, 410)
    return share


def _to_viewer(share: ShareRecord) -> BaseResponse:
    token, _claims = issue_share_token(resources().codec, share)
    query = urlencode({"StudyInstanceUIDs": share.study_uid, "token": token})
    log.info("share %s opened from %s", share.id, request.remote_addr)
    response = Response(status=303)
    response.headers["Location"] = f"{VIEWER_SHARE_ROUTE}?{query}"
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@blueprint.get(SHARE_PATH + "<path:share_id>")
def open_link(share_id: str) -> BaseResponse:
    share = _share(share_id)
    if isinstance(share, Response):
        return share
    if share.pin_hash is None:
        return _to_viewer(share)
    wait = _pin_throttle().retry_after(share.id)
    if wait:
        return _locked(wait)
    return _pin_page(share, PinForm(formdata=None))


@blueprint.post(SHARE_PATH + "<path:share_id>")
def enter_pin(share_id: str) -> BaseResponse:
    share = _share(share_id)
    if isinstance(share, Response):
        return share
    if share.pin_hash is None:
        return _to_viewer(share)
    throttle = _pin_throttle()
    wait = throttle.retry_after(share.id)
    if wait:
        return _locked(wait)
    form = PinForm()
    if not form.validate():
        # The CSRF token was checked before the view ran; what is left is the PIN itself.
        return _pin_page(share, form, 400, ENTER_PIN)
    # Counted before it is checked: guesses sent at once get no more than PIN_LIMIT checks.
    failures = throttle.failed(share.id)
    if failures > PIN_LIMIT:
        return _locked(throttle.retry_after(share.id) or PIN_WINDOW)
    if not check_password(form.pin.data or "", share.pin_hash):
        log.warning("share %s: wrong PIN from %s (%d)", share.id, request.remote_addr, failures)
        if failures >= PIN_LIMIT:
            return _locked(throttle.retry_after(share.id) or PIN_WINDOW)
        left = PIN_LIMIT - failures
        return _pin_page(
            share,
            PinForm(formdata=None),
            400,
            f"{WRONG_PIN} {left} more wrong PIN{'s' if left != 1 else ''} will lock this link "
            "for a day.",
        )
    throttle.clear(share.id)  # the right PIN: this attempt was no guess
    return _to_viewer(share)


@blueprint.errorhandler(CSRFError)
def _csrf_failed(exc: CSRFError) -> BaseResponse:
    """An expired or missing CSRF token: the PIN form again, with a fresh one."""
    log.info("CSRF check failed on the share link page: %s", exc.description)
    share = _share((request.view_args or {}).get("share_id", ""))
    if isinstance(share, Response):
        return share
    if share.pin_hash is None:
        return _to_viewer(share)  # what its link's GET does
    wait = _pin_throttle().retry_after(share.id)
    if wait:
        return _locked(wait)
    return _pin_page(share, PinForm(formdata=None), 400, FORM_EXPIRED)


@blueprint.errorhandler(StoreUnavailable)
def _store_down(exc: StoreUnavailable) -> Response:
    log.error("redis unavailable on the share link page")
    response = _message("Cannot open this link", STORE_DOWN, 503)
    response.headers["Retry-After"] = "5"
    return response
