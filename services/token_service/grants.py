"""What the token service decides, apart from HTTP: who may get which token.

The routes parse requests and shape responses; these functions take plain
inputs and raise domain errors (`GrantRefused`, the codec's `TokenError`s,
`StoreUnavailable`). Each check starts from "refuse" and only a complete,
successful run returns a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from services.domain.auth_tokens import issue_auth_token
from services.domain.origins import OriginPolicy, parse_origin
from services.domain.passwords import check_password
from services.domain.tokens import TokenCodec, TokenInvalid, TokenKind, TokenMissing
from services.domain.user import UserRecord
from services.settings import Settings
from services.stores.accounts import (
    AccountError,
    find_user,
    identity,
    revoke_all_tokens,
    save_user,
)
from services.stores.revocation import RevocationStore
from services.stores.throttle import Throttle
from services.web.app import Resources

# The old system's messages; its clients compare them verbatim.
INVALID_ADMIN_PASSWORD = "Invalid admin password"  # noqa: S105 - a message, not a secret
USER_EXISTS = "User already exists"
USER_MISSING = "User doesn't exists"
NAME_NOT_VALID = "Name not valid"
USERNAME_NOT_VALID = "username not valid"
INVALID_DATA = "Invalid data"
# Ours, where the seed had none.
USER_DISABLED = "User is disabled"
TOO_MANY_ATTEMPTS = "Too many wrong admin passwords; try again later"
ORIGIN_NOT_ALLOWED = "Origin not allowed"

# Wrong admin passwords from one client address: 5 within 15 minutes blocks it
# for the rest of the window (shared by every worker through Redis).
ADMIN_THROTTLE_LIMIT = 5
ADMIN_THROTTLE_WINDOW = 15 * 60


class GrantRefused(Exception):
    """A refusal with a message that is safe to show, and its HTTP status."""

    def __init__(self, message: str, status: int = 400, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after


def admin_throttle(res: Resources) -> Throttle:
    return Throttle(
        res.redis,
        res.settings.redis_key_prefix,
        "admin-password",
        limit=ADMIN_THROTTLE_LIMIT,
        window=ADMIN_THROTTLE_WINDOW,
    )


def check_admin_password(
    settings: Settings, throttle: Throttle, client: str, password: str
) -> None:
    """Pass, or raise GrantRefused: 429 while `client` is blocked, 400 for a wrong password.

    Every wrong password counts against the client address and slows the
    answer down; Redis being down raises StoreUnavailable (nothing granted).
    """
    wait = throttle.retry_after(client)
    if wait:
        raise GrantRefused(TOO_MANY_ATTEMPTS, 429, retry_after=wait)
    if not check_password(password, settings.admin_password_hash or None):
        failures = throttle.failed(client)
        throttle.slow_down(failures)
        raise GrantRefused(INVALID_ADMIN_PASSWORD)
    throttle.clear(client)


def save_user_and_issue(
    session: Session,
    res: Resources,
    *,
    name: str,
    username: str,
    password: str,
    can_edit: bool,
) -> tuple[str, dict[str, Any]]:
    """Create or overwrite the user (keeping its admin flag) and issue an unbound auth token.

    Overwriting revokes every token the user held (its generation is raised, as
    `zhiva-admin reset-password` does): whoever had the old password or rights
    must not keep them through a token. The token answered here is of the new
    generation. Nothing is written unless the caller's transaction commits.
    """
    existing = find_user(session, username)
    if existing is not None and existing.disabled:
        raise GrantRefused(USER_DISABLED)
    try:
        user = save_user(
            session,
            name=name,
            username=username,
            password=password,
            can_edit=can_edit,
            is_admin=existing.is_admin if existing is not None else False,
        )
        if existing is not None:
            user = revoke_all_tokens(session, user.username)
    except AccountError as error:
        raise GrantRefused(str(error)) from None
    # The one place auth tokens get their server addresses, shared with the login service.
    return issue_auth_token(res.codec, res.settings, identity(user))


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization` header; `Bearer x` or, as the seed accepted, a bare `x`."""
    if header is None or not header.strip():
        raise TokenMissing()
    parts = header.split()
    if len(parts) == 2 and parts[0].lower() == "bearer":
        return parts[1]
    if len(parts) == 1 and parts[0].lower() != "bearer":
        return parts[0]
    if len(parts) == 1:
        raise TokenMissing()
    raise TokenInvalid("Authorization header is not a bearer token")


def check_request_origin(policy: OriginPolicy, origin: str | None) -> None:
    """A browser request (it has `Origin`) must come from an allowed origin."""
    if origin is not None and not policy.allows(origin):
        raise TokenInvalid("request origin not allowed")


@dataclass(frozen=True)
class Grant:
    access_token: str
    refresh_token: str | None = None


def _current_identity(session: Session, claims: dict[str, Any]) -> UserRecord:
    """The user's identity now, if the token still speaks for them.

    The user must exist, be enabled and still be at the token's generation
    (raising it, e.g. `zhiva-admin revoke-tokens`, revokes every older token).
    """
    user = find_user(session, claims["username"])
    if user is None:
        raise TokenInvalid("user no longer exists")
    if user.disabled:
        raise TokenInvalid("user is disabled")
    if claims["gen"] != user.token_generation:
        raise TokenInvalid("token generation revoked")
    return identity(user)


def _audience(claims: dict[str, Any], origin: str | None) -> str | None:
    """A bound token keeps its origin; an unbound one binds to the request's origin, if any."""
    if claims.get("aud"):
        return claims["aud"]
    parsed = parse_origin(origin)
    return str(parsed) if parsed is not None else None


def redeem_auth_token(
    session: Session,
    codec: TokenCodec,
    revocations: RevocationStore,
    policy: OriginPolicy,
    token: str,
    origin: str | None,
) -> Grant:
    """Exchange a one-off auth token for access + refresh tokens, exactly once."""
    check_request_origin(policy, origin)
    claims = codec.verify(token, TokenKind.AUTH, origin=origin)
    who = _current_identity(session, claims)
    # Redis SET NX: of all workers and hosts, one caller wins; the key lives as
    # long as the token could, so a restart of Redis (AOF) does not reopen it.
    if not revocations.redeem_once(claims["jti"], claims["exp"]):
        raise TokenInvalid("auth token already used or revoked")
    audience = _audience(claims, origin)
    access, _ = codec.issue(TokenKind.ACCESS, who, audience=audience)
    refresh, _ = codec.issue(TokenKind.REFRESH, who, audience=audience)
    return Grant(access, refresh)


def refresh_access_token(
    session: Session,
    codec: TokenCodec,
    revocations: RevocationStore,
    policy: OriginPolicy,
    token: str,
    origin: str | None,
) -> Grant:
    """A new access token for a valid, unrevoked refresh token, with the same origin binding."""
    check_request_origin(policy, origin)
    claims = codec.verify(token, TokenKind.REFRESH, origin=origin)
    who = _current_identity(session, claims)
    if revocations.is_revoked(claims["jti"]):
        raise TokenInvalid("refresh token revoked")
    access, _ = codec.issue(TokenKind.ACCESS, who, audience=claims.get("aud") or None)
    return Grant(access)
