"""Share links' API: `POST /auth/shares` makes one, `GET` lists them, `DELETE …/<id>` revokes one.

The caller is an access token's user: a zhiva access token, or an access token of
our OpenID Connect provider (judged as the policy judges it, services/policy_service/
decision.py: its client still registered, the browser's Origin one of the client's,
its family not revoked). Either way the user's state now decides: unknown,
disabled or of another token generation is refused, and the role is the lower of
the token's and the user's. Editors and admins make shares; everyone lists and
revokes their own, an admin every share. Another user's share is "not found", so
ids are not confirmed to whoever guesses them.

The link itself (`url`) is the login service's page (services/login_service/shares.py),
which mints a share token each time it is opened; the token answered here is one
such token, for scripts. Log lines name the share, its study and its user; never a
token or a PIN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy.orm import Session

from services.access.permissions import Role, role_of
from services.domain.clients import client_refusal
from services.domain.shares import (
    ShareError,
    ShareRecord,
    check_lifetime,
    check_pin,
    check_study_uid,
    issue_share_token,
)
from services.domain.tokens import TokenInvalid, TokenKind
from services.stores.accounts import find_user
from services.stores.orthanc import OrthancResources, OrthancUnavailable
from services.stores.shares import (
    create_share,
    find_share,
    iso,
    list_shares,
    listing,
    revoke_share,
)
from services.web.app import error, log, resources
from services.web.cors import add_cors_headers

from . import grants

blueprint = Blueprint("shares", __name__)

SHARES_PATH = "/auth/shares"
VIEWERS_CANNOT_SHARE = "Viewers cannot share studies"
STUDY_NOT_FOUND = "Study not found"
SHARE_NOT_FOUND = "Share not found"
BODY_NOT_AN_OBJECT = "The body must be a JSON object"
# The methods a browser on an allowed origin may use here (its preflight's answer).
CORS_METHODS = "GET, POST, DELETE, OPTIONS"


@dataclass(frozen=True)
class Caller:
    username: str
    role: Role


def _orthanc() -> OrthancResources:
    orthanc: OrthancResources = current_app.extensions["zhiva_orthanc"]
    return orthanc


def _oidc_refusal(claims: dict[str, Any], origin: str | None) -> str | None:
    """Why an OIDC access token may not be used here (as the policy refuses it), or None."""
    deps = current_app.extensions["zhiva_oidc"].deps
    refused = client_refusal(deps.clients.find(claims["client_id"]), claims["iat"], origin)
    if refused:
        return refused
    if resources().revocations.is_revoked("fam:" + claims["fam"]):
        return "token revoked (family)"
    return None


def caller(session: Session) -> Caller:
    """The user the request's access token speaks for, as the database has it now; the
    codec's TokenError (401/403 by services/web/app.py) for any other request."""
    res = resources()
    origin = request.headers.get("Origin")
    token = grants.bearer_token(request.headers.get("Authorization"))
    claims = res.codec.verify_for_pacs(token, (TokenKind.ACCESS,), origin=origin)
    oidc = "client_id" in claims
    if oidc:
        refused = _oidc_refusal(claims, origin)
        if refused:
            raise TokenInvalid(refused)
    if res.revocations.is_revoked(claims["jti"]):
        raise TokenInvalid("token revoked")
    username = claims["preferred_username"] if oidc else claims["username"]
    user = find_user(session, username)
    if user is None:
        raise TokenInvalid("user no longer exists")
    if user.disabled:
        raise TokenInvalid("user is disabled")
    if user.token_generation != claims["gen"]:
        raise TokenInvalid("token generation revoked")
    if oidc and user.subject != claims["sub"]:
        raise TokenInvalid("user replaced")
    # The smaller of what the token says and what the user is now: a demotion bites at once.
    role = min(
        role_of(claims["canEditResource"], claims["isAdmin"]),
        role_of(user.can_edit, user.is_admin),
    )
    return Caller(user.username, role)


def share_url(share: ShareRecord) -> str:
    """The link to hand out: the login service's page, which opens the viewer."""
    return f"{resources().settings.public_base_url}/auth/share/{share.id}"


@blueprint.before_request
def _allowed_origin() -> Response | None:
    # No CSRF token here (bearer tokens, not cookies): a browser must be on an allowed origin.
    origin = request.headers.get("Origin")
    if request.method != "OPTIONS" and origin is not None:
        if not resources().origins.allows(origin):
            return error(grants.ORIGIN_NOT_ALLOWED, 403)
    return None


@blueprint.after_request
def _headers(response: Response) -> Response:
    add_cors_headers(response, request.headers.get("Origin"), resources().origins)
    if request.method == "OPTIONS" and "Access-Control-Allow-Methods" in response.headers:
        response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
    # Answers carry share tokens, or say which shares exist: never cached.
    response.headers["Cache-Control"] = "no-store"
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


@blueprint.post(SHARES_PATH)
def create():  # type: ignore[no-untyped-def]
    """A new share of a stored study: `{"study", "expiresIn"?, "pin"?}` → 201."""
    res = resources()
    with res.db.session() as session:
        who = caller(session)
        if who.role < Role.EDITOR:
            return error(VIEWERS_CANNOT_SHARE, 403)
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return error(BODY_NOT_AN_OBJECT, 400)
        try:
            share = _create(session, who, body)
        except ShareError as refused:
            return error(str(refused), 400)
        except OrthancUnavailable as down:
            return error(str(down), 503, {"Retry-After": "5"})
        if share is None:
            return error(STUDY_NOT_FOUND, 404)
    token, _claims = issue_share_token(res.codec, share)
    log.info(
        "share %s of study %s created by %s (until %s%s)",
        share.id,
        share.study_uid,
        who.username,
        iso(share.expires_at),
        ", with a PIN" if share.pin_hash else "",
    )
    answer = jsonify(
        id=share.id, url=share_url(share), token=token, expiresAt=iso(share.expires_at)
    )
    answer.status_code = 201
    return answer


def _create(session: Session, who: Caller, body: dict[str, Any]) -> ShareRecord | None:
    """The new share, None when the PACS has no such study; ShareError for a bad value."""
    # Every value is checked before Orthanc is asked: a bad one is a 400 whatever is stored.
    study_uid = check_study_uid(body.get("study"))
    lifetime = check_lifetime(body.get("expiresIn"))
    pin = check_pin(body.get("pin"))
    study_id = _orthanc().find_study(study_uid)
    if study_id is None:
        return None
    return create_share(
        session,
        study_uid=study_uid,
        study_id=study_id,
        created_by=who.username,
        lifetime=lifetime,
        pin=pin,
    )


@blueprint.get(SHARES_PATH)
def index():  # type: ignore[no-untyped-def]
    """The caller's shares (an admin's: every share), the newest first."""
    with resources().db.session() as session:
        who = caller(session)
        shares = list_shares(session, None if who.role >= Role.ADMIN else who.username)
    return jsonify(shares=[listing(share) for share in shares])


@blueprint.delete(f"{SHARES_PATH}/<share_id>")
def revoke(share_id: str):  # type: ignore[no-untyped-def]
    """Revoke a share: its creator or an admin; 404 for anyone else, as for no share."""
    res = resources()
    with res.db.session() as session:
        who = caller(session)
        share = find_share(session, share_id)
        if share is None or (who.role < Role.ADMIN and share.created_by != who.username):
            return error(SHARE_NOT_FOUND, 404)
        revoke_share(session, share.id)
        # Inside the transaction: when Redis cannot take it (503), revoked_at is not
        # written either, and the caller tries again.
        res.revocations.revoke(share.id, share.expires_at)
    log.info("share %s of study %s revoked by %s", share.id, share.study_uid, who.username)
    return Response(status=204)


VIEWS = (create, index, revoke)
