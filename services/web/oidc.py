"""The OpenID Connect provider: authlib's server, held to this project's rules.

Every protocol rule of docs/OIDC.md lives here, as subclasses of authlib's
classes; the routes (services/login_service/oidc_routes.py for the browser,
services/token_service/oidc_routes.py for clients) only call them. Where
authlib's stock behaviour is weaker than the rules (PKCE `plain` or missing,
redirect-URI errors that echo the URI, device codes that are never used up,
an `id_token_hint` checked by signature only), the override says so.

Codes, refresh-token families, provider sessions and device codes are in
Redis (services/stores/oidc_state.py); clients and users in the database,
read through the driver (services/stores/clients.py, services/stores/users.py).
The policy service never imports this module: it verifies access tokens with
the codec alone (services/domain/tokens.py).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from secrets import token_urlsafe
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2.rfc6749 import ClientMixin
from authlib.oauth2.rfc6749.errors import (
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc6750 import BearerTokenValidator, InvalidTokenError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc8628 import (
    DeviceAuthorizationEndpoint,
    DeviceCodeGrant,
    DeviceCredentialDict,
)
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from authlib.oidc.core import OpenIDCode, UserInfo, UserInfoEndpoint
from authlib.oidc.core.models import AuthorizationCodeMixin
from authlib.oidc.rpinitiated import EndSessionEndpoint
from flask import Flask, request
from joserfc.jwk import KeyParameters, KeySet, RSAKey

from services.domain.clients import ClientRecord, client_refusal, valid_client_id
from services.domain.origins import parse_origin
from services.domain.tokens import ALGORITHM, TokenCodec, TokenError
from services.domain.user import UserRecord
from services.settings import Settings
from services.stores.clients import ClientTable
from services.stores.oidc_state import OidcState
from services.stores.revocation import RevocationStore
from services.stores.users import UserTable

log = logging.getLogger("zhiva.oidc")

# What a client may ask for; anything else in `scope` is dropped (OHIF also asks `email`).
SCOPES = ("openid", "profile", "offline_access")
DEVICE_GRANT_TYPE = DeviceCodeGrant.GRANT_TYPE
GRANT_TYPES = ("authorization_code", "refresh_token", DEVICE_GRANT_TYPE)
CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
CODE_LIFETIME_SECONDS = 60
DEVICE_CODE_LIFETIME_SECONDS = 600
DEVICE_POLL_INTERVAL_SECONDS = 5
SESSION_COOKIE = "__Host-zhiva_oidc"
# A fixed text: authlib's own echoes the URI, and a `"` in it made a 500 (docs/OIDC.md).
UNREGISTERED_REDIRECT = "redirect_uri is not registered for this client"


@dataclass(frozen=True)
class Subject:
    """authlib's "user": a signed-in account, and the token family it is signing into."""

    username: str
    name: str
    can_edit: bool
    is_admin: bool
    generation: int
    subject: str
    family: str
    family_expires_at: int
    auth_time: int
    session_id: str = ""

    def get_user_id(self) -> str:
        return self.subject

    @classmethod
    def of(
        cls,
        user: UserRecord,
        *,
        family: str,
        family_expires_at: int,
        auth_time: int,
        session_id: str = "",
    ) -> Subject:
        return cls(
            username=user.username,
            name=user.name,
            can_edit=user.can_edit,
            is_admin=user.is_admin,
            generation=user.token_generation,
            subject=user.subject,
            family=family,
            family_expires_at=family_expires_at,
            auth_time=auth_time,
            session_id=session_id,
        )


def current_user(users: UserTable, username: str, generation: int, subject: str) -> UserRecord:
    """The account as the database has it now, when it still is the one a grant was made to."""
    user = users.find(username)
    if user is None or user.disabled:
        raise InvalidGrantError("the user is unknown or disabled")
    if user.token_generation != generation or user.subject != subject:
        raise InvalidGrantError("the user's tokens were revoked")
    return user


@dataclass
class OidcDeps:
    """What the provider's classes reach through `server.deps`."""

    settings: Settings
    codec: TokenCodec
    state: OidcState
    clients: ClientTable
    users: UserTable
    revocations: RevocationStore

    def new_family(self) -> tuple[str, int]:
        """A refresh-token family's id and absolute end: rotation never extends it."""
        return uuid.uuid4().hex, int(time.time()) + self.settings.refresh_token_lifetime

    def revoked_until(self, family_expires_at: int | None = None) -> int:
        """How long a family's revocation must last: until the last access token it could
        have got expires (the family's end, or the longest a family lives from now)."""
        if family_expires_at is None:
            family_expires_at = self.new_family()[1]
        return family_expires_at + self.settings.oidc_access_token_lifetime


class OidcClient(ClientMixin):
    """A registered client, as authlib asks about it."""

    def __init__(self, record: ClientRecord) -> None:
        self.record = record
        self.client_id = record.client_id
        # Read as attributes by authlib's userinfo and end-session endpoints.
        self.client_metadata = {"post_logout_redirect_uris": list(record.post_logout_redirect_uris)}

    @property
    def origins(self) -> frozenset[str]:
        return self.record.origins

    def get_client_id(self) -> str:
        return self.record.client_id

    def get_default_redirect_uri(self) -> None:
        return None  # redirect_uri is always required: no default to fall back on

    def get_allowed_scope(self, scope: str | None) -> str:
        asked = (scope or "").split()
        return " ".join(part for part in dict.fromkeys(asked) if part in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # Exact string equality: no normalisation, no prefix, case-sensitive.
        return redirect_uri in self.record.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return self.record.check_secret(client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.record.is_public:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in GRANT_TYPES


def check_origin(client: OidcClient, origin: str | None) -> bool:
    """A browser's request for a client comes from one of its redirect URIs' origins."""
    if not origin:
        return True  # no browser: judged without it, as the zhiva tokens are
    parsed = parse_origin(origin)
    return parsed is not None and str(parsed) in client.origins


class ZhivaAuthorizationServer(AuthorizationServer):
    def __init__(self, deps: OidcDeps) -> None:
        super().__init__()
        self.deps = deps

    def query_client(self, client_id: str | None) -> OidcClient | None:
        if not isinstance(client_id, str) or not valid_client_id(client_id):
            return None
        record = self.deps.clients.find(client_id)
        return OidcClient(record) if record is not None else None

    def authenticate_client(self, request: Any, methods: Any, endpoint: str = "token") -> Any:
        client = super().authenticate_client(request, methods, endpoint)
        if not check_origin(client, request.headers.get("Origin")):
            raise InvalidClientError(description="this origin is not one of the client's")
        return client

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        refresh = token.get("refresh_token")
        user: Subject = request.user
        if refresh:
            record = {
                "family": user.family,
                "client_id": request.client.get_client_id(),
                "username": user.username,
                "subject": user.subject,
                "generation": str(user.generation),
                "scope": token.get("scope", ""),
                "auth_time": str(user.auth_time),
                "family_expires_at": str(user.family_expires_at),
            }
            self.deps.state.save_refresh(refresh, record, user.family_expires_at)


class AccessTokenGenerator(JWTBearerTokenGenerator):
    """RFC 9068 access tokens, signed with the codec's key, with what the policy reads."""

    def __init__(self, deps: OidcDeps, keys: KeySet) -> None:
        lifetime = deps.settings.oidc_access_token_lifetime
        super().__init__(
            issuer=deps.settings.oidc_issuer,
            alg=ALGORITHM,
            refresh_token_generator=self.refresh_token,
            expires_generator=lambda client, grant_type: lifetime,
        )
        self.deps = deps
        self.keys = keys

    @staticmethod
    def refresh_token(client: Any, grant_type: str, user: Subject, scope: str) -> str:
        # Opaque, and its family up front so a log or a script can tell families apart.
        return f"{user.family}.{token_urlsafe(32)}"

    def get_jwks(self) -> KeySet:
        return self.keys  # a KeySet whose key has a kid: authlib then writes the kid

    def get_audiences(self, client: Any, user: Subject, scope: str) -> str:
        return self.deps.settings.oidc_resource

    def get_jti(self, client: Any, grant_type: str, user: Subject, scope: str) -> str:
        return uuid.uuid4().hex

    def get_auth_time(self, user: Subject) -> int:
        return user.auth_time

    def get_amr(self, user: Subject) -> list[str]:
        return ["pwd"]

    def get_extra_claims(
        self, client: Any, grant_type: str, user: Subject, scope: str
    ) -> dict[str, Any]:
        return {
            "fam": user.family,
            "gen": user.generation,
            "preferred_username": user.username,
            "name": user.name,
            "canEditResource": user.can_edit,
            "isAdmin": user.is_admin,
        }


class S256CodeChallenge(CodeChallenge):
    """PKCE with S256 for every client: the stock class lets a request without PKCE or
    with `plain` through at the authorization endpoint."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge") or data.get("code_challenge_method") != "S256":
            raise InvalidRequestError(
                "PKCE is required: code_challenge with code_challenge_method S256",
                redirect_uri=redirect_uri,
            )
        super().validate_code_challenge(grant, redirect_uri)


class AuthorizationCode(dict[str, Any], AuthorizationCodeMixin):
    """A code's record, as stored at the authorization endpoint."""

    def get_redirect_uri(self) -> str:
        return self["redirect_uri"]

    def get_scope(self) -> str:
        return self["scope"]

    def get_nonce(self) -> str | None:
        return self.get("nonce") or None

    def get_auth_time(self) -> int:
        return int(self["auth_time"])

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> list[str]:
        return ["pwd"]

    @property
    def code_challenge(self) -> str:
        return self["code_challenge"]

    @property
    def code_challenge_method(self) -> str:
        return self["code_challenge_method"]


class CodeGrant(AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    server: ZhivaAuthorizationServer

    @staticmethod
    def validate_authorization_redirect_uri(request: Any, client: OidcClient) -> str:
        redirect_uri = request.payload.redirect_uri
        if not redirect_uri or not client.check_redirect_uri(redirect_uri):
            raise InvalidRequestError(UNREGISTERED_REDIRECT)
        return str(redirect_uri)

    def validate_requested_scope(self) -> None:
        if "openid" not in (self.request.payload.scope or "").split():
            raise InvalidScopeError("the openid scope is required")

    def save_authorization_code(self, code: str, request: Any) -> None:
        user: Subject = request.user
        data = request.payload.data
        family, _ = self.server.deps.new_family()
        record = {
            "client_id": request.client.get_client_id(),
            "redirect_uri": request.payload.redirect_uri,
            "scope": request.scope,
            "nonce": data.get("nonce") or "",
            "auth_time": user.auth_time,
            "code_challenge": data["code_challenge"],
            "code_challenge_method": data["code_challenge_method"],
            "username": user.username,
            "subject": user.subject,
            "generation": user.generation,
            "family": family,
            "session": user.session_id,
        }
        state = self.server.deps.state
        state.save_code(code, record, CODE_LIFETIME_SECONDS)
        if record["nonce"]:
            state.remember_nonce(
                record["client_id"],
                record["nonce"],
                self.server.deps.settings.oidc_id_token_lifetime,
            )
        if user.session_id:
            # Logout ends what the session signed into.
            state.add_session_family(user.session_id, family)

    def query_authorization_code(self, code: str, client: OidcClient) -> AuthorizationCode | None:
        deps = self.server.deps
        outcome, record = deps.state.take_code(code)
        if outcome == "reused" and record is not None:
            # A second use revokes what the first one was given.
            deps.state.revoke_family(record["family"], deps.revoked_until())
            log.warning("authorization code used twice: family %s revoked", record["family"])
            raise InvalidGrantError("the code was already used")
        if outcome != "ok" or record is None or record["client_id"] != client.get_client_id():
            return None  # another client's code is burnt too: single use however it ends
        return AuthorizationCode(record)

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        pass  # take_code already removed it

    def authenticate_user(self, authorization_code: AuthorizationCode) -> Subject:
        deps = self.server.deps
        code = authorization_code
        user = current_user(deps.users, code["username"], code["generation"], code["subject"])
        _, family_expires_at = deps.new_family()
        return Subject.of(
            user,
            family=code["family"],
            family_expires_at=family_expires_at,
            auth_time=int(code["auth_time"]),
            session_id=code["session"],
        )


def user_info(user: Subject) -> UserInfo:
    return ZhivaUserInfo(
        sub=user.subject,
        name=user.name,
        preferred_username=user.username,
        canEditResource=user.can_edit,
    )


class ZhivaUserInfo(UserInfo):
    # The stock filter drops claims it does not know; ours belongs to `profile`.
    SCOPES_CLAIMS_MAPPING = {
        **UserInfo.SCOPES_CLAIMS_MAPPING,
        "profile": [*UserInfo.SCOPES_CLAIMS_MAPPING["profile"], "canEditResource"],
    }


class ZhivaOpenIDCode(OpenIDCode):
    """ID tokens: RS256 from the codec's key, `kid` in the header, our issuer."""

    def __init__(self, deps: OidcDeps, keys: KeySet) -> None:
        super().__init__(require_nonce=False)
        self.deps = deps
        self.keys = keys

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        # Read-only: authlib asks again on the form's POST and while answering it.
        return self.deps.state.nonce_used(request.payload.client_id or "", nonce)

    def resolve_client_private_key(self, client: OidcClient) -> KeySet:
        return self.keys

    def get_client_algorithm(self, client: OidcClient) -> str:
        return ALGORITHM

    def get_encode_header(self, client: OidcClient) -> dict[str, str]:
        return {"alg": ALGORITHM, "typ": "JWT", "kid": self.deps.codec.kid}

    def get_client_claims(self, client: OidcClient) -> dict[str, Any]:
        return {
            "iss": self.deps.settings.oidc_issuer,
            "aud": client.get_client_id(),
            "exp": int(time.time()) + self.deps.settings.oidc_id_token_lifetime,
        }

    def generate_user_info(self, user: Subject, scope: str) -> UserInfo:
        return user_info(user).filter(scope)


class RefreshRecord(dict[str, Any]):
    """A spent refresh token's record, as the refresh grant asks about it."""

    def check_client(self, client: OidcClient) -> bool:
        return bool(self["client_id"] == client.get_client_id())

    def get_scope(self) -> str:
        return str(self.get("scope", ""))


class ZhivaRefreshTokenGrant(RefreshTokenGrant):
    """Strict rotation: each use spends the token; a spent one used again ends its family."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True
    server: ZhivaAuthorizationServer

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshRecord | None:
        client = self.request.client  # authenticated by authlib before this is called
        deps = self.server.deps
        outcome, record = deps.state.rotate_refresh(refresh_token, client.get_client_id())
        if outcome == "reused":
            log.warning("a spent refresh token was used again: its family is revoked")
        if outcome != "ok" or record is None:
            return None
        started = int(record["family_expires_at"]) - deps.settings.refresh_token_lifetime
        if started < int(client.record.registered_at):
            return None  # issued to a removed client of the same id
        return RefreshRecord(record)

    def authenticate_user(self, refresh_token: RefreshRecord) -> Subject:
        record = refresh_token
        user = current_user(
            self.server.deps.users,
            record["username"],
            int(record["generation"]),
            record["subject"],
        )
        return Subject.of(
            user,
            family=record["family"],
            family_expires_at=int(record["family_expires_at"]),
            auth_time=int(record["auth_time"]),
        )

    def revoke_old_credential(self, refresh_token: RefreshRecord) -> None:
        pass  # rotate_refresh spent it


class DeviceEndpoint(DeviceAuthorizationEndpoint):
    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS
    EXPIRES_IN = DEVICE_CODE_LIFETIME_SECONDS
    INTERVAL = DEVICE_POLL_INTERVAL_SECONDS
    server: ZhivaAuthorizationServer

    def get_verification_uri(self) -> str:
        return self.server.deps.settings.oidc_issuer + "/oauth/device/verify"

    def save_device_credential(
        self, client_id: str, scope: str | None, data: dict[str, Any]
    ) -> None:
        self.server.deps.state.save_device(
            data["device_code"],
            data["user_code"],
            {"client_id": client_id, "scope": client_scope(scope)},
            self.EXPIRES_IN,
            self.INTERVAL,
        )


def client_scope(scope: str | None) -> str:
    return " ".join(part for part in dict.fromkeys((scope or "").split()) if part in SCOPES)


class DeviceCredential(DeviceCredentialDict):
    pass


class ZhivaDeviceCodeGrant(DeviceCodeGrant):
    """The stock grant never uses a device code up: here tokens come once per approval."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    server: ZhivaAuthorizationServer

    def _device_code(self) -> str:
        return str(self.request.payload.data.get("device_code", ""))

    def query_device_credential(self, device_code: str) -> DeviceCredential | None:
        record = self.server.deps.state.device(device_code)
        if record is None:
            return None
        return DeviceCredential(
            client_id=record["client_id"],
            scope=record.get("scope", ""),
            user_code=record["user_code"],
            expires_at=float(record["expires_at"]),
        )

    def query_user_grant(self, user_code: str) -> tuple[Subject | None, bool] | None:
        deps = self.server.deps
        outcome, record = deps.state.take_device_grant(self._device_code())
        if outcome == "pending":
            return None
        if outcome == "denied":
            return None, False
        if outcome != "approved" or record is None:
            raise InvalidGrantError("the device code was already used")
        user = current_user(
            deps.users, record["username"], int(record["generation"]), record["subject"]
        )
        family, family_expires_at = deps.new_family()
        subject = Subject.of(
            user,
            family=family,
            family_expires_at=family_expires_at,
            auth_time=int(record["auth_time"]),
        )
        return subject, True

    def should_slow_down(self, credential: DeviceCredential) -> bool:
        return self.server.deps.state.should_slow_down(self._device_code())


@dataclass
class AccessTokenView:
    """A verified OIDC access token, as authlib's resource endpoints ask about it."""

    claims: dict[str, Any]
    client: OidcClient
    user: Subject
    revoked: bool

    @property
    def scope(self) -> str:
        return str(self.claims.get("scope", ""))

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return False  # the codec refused an expired one

    def is_revoked(self) -> bool:
        return self.revoked

    def get_client(self) -> OidcClient:
        return self.client

    def get_user(self) -> Subject:
        return self.user

    def check_client(self, client: OidcClient) -> bool:
        return bool(self.client.get_client_id() == client.get_client_id())


def access_token_view(
    deps: OidcDeps, server: ZhivaAuthorizationServer, token: str
) -> AccessTokenView | None:
    """An OIDC access token's view, None when it is not a valid one of ours (or its client
    is gone); whether it is revoked, or its user changed, is in `revoked`."""
    try:
        claims = deps.codec.verify_oidc_access(token)
    except TokenError:
        return None
    client = server.query_client(claims["client_id"])
    if client is None:
        return None  # a removed client's
    user = deps.users.find(claims["preferred_username"])
    revoked = (
        user is None
        or user.disabled
        or user.token_generation != claims["gen"]
        or user.subject != claims["sub"]
        or deps.revocations.is_revoked(claims["jti"])
        or deps.revocations.is_revoked("fam:" + claims["fam"])
    )
    subject = Subject(
        username=claims["preferred_username"],
        name=user.name if user else claims.get("name", ""),
        can_edit=bool(user and user.can_edit and claims["canEditResource"]),
        is_admin=bool(user and user.is_admin and claims["isAdmin"]),
        generation=claims["gen"],
        subject=claims["sub"],
        family=claims["fam"],
        family_expires_at=0,
        auth_time=int(claims.get("auth_time", 0)),
    )
    return AccessTokenView(claims, client, subject, revoked)


class AccessTokenValidator(BearerTokenValidator):
    def __init__(self, deps: OidcDeps, server: ZhivaAuthorizationServer) -> None:
        super().__init__()
        self.deps = deps
        self.server = server

    def authenticate_token(self, token_string: str) -> AccessTokenView | None:
        return access_token_view(self.deps, self.server, token_string)

    def validate_token(self, token: AccessTokenView | None, scopes: Any, request: Any) -> None:
        super().validate_token(token, scopes, request)
        assert token is not None  # the stock check refuses a missing one
        refused = client_refusal(
            token.client.record, token.claims["iat"], request.headers.get("Origin")
        )
        if refused:
            raise InvalidTokenError(description=refused)


class ZhivaUserInfoEndpoint(UserInfoEndpoint):
    server: ZhivaAuthorizationServer

    def generate_user_info(self, user: Subject, scope: str) -> UserInfo:
        return user_info(user).filter(scope)

    def get_issuer(self) -> str:
        return self.server.deps.settings.oidc_issuer


class ZhivaRevocationEndpoint(RevocationEndpoint):
    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS
    server: ZhivaAuthorizationServer

    def query_token(
        self, token_string: str, token_type_hint: str | None
    ) -> RefreshRecord | AccessTokenView | None:
        deps = self.server.deps
        if token_type_hint != "access_token":  # noqa: S105 - a hint's name
            record = deps.state.find_refresh(token_string)
            if record is not None:
                return RefreshRecord(record)
        if token_type_hint != "refresh_token" or token_string.count(".") == 2:  # noqa: S105
            return access_token_view(deps, self.server, token_string)
        return None

    def revoke_token(self, token: RefreshRecord | AccessTokenView, request: Any) -> None:
        deps = self.server.deps
        if isinstance(token, RefreshRecord):
            until = deps.revoked_until(int(token["family_expires_at"]))
            deps.state.revoke_family(token["family"], until)
        else:
            deps.revocations.revoke(token.claims["jti"], int(token.claims["exp"]))


class ZhivaEndSessionEndpoint(EndSessionEndpoint):
    """RP-initiated logout. authlib checks only the hint's signature; a hint is trusted
    here only when it is one of our ID tokens, for a registered client, naming the user
    of this browser's session. Otherwise the user confirms (the route shows the page)."""

    server: ZhivaAuthorizationServer

    def __init__(self, keys: KeySet, session_of: Callable[[], dict[str, Any] | None]) -> None:
        super().__init__()
        self.keys = keys
        self.session_of = session_of

    def get_server_jwks(self) -> KeySet:
        return self.keys

    def get_algorithms(self) -> list[str]:
        return [ALGORITHM]

    def validate_request(self, request: Any) -> Any:
        validated = super().validate_request(request)
        claims = validated.id_token_claims
        if claims is not None and not self._trusted(claims):
            validated.id_token_claims = None
            validated.redirect_uri = None
        return validated

    def _trusted(self, claims: dict[str, Any]) -> bool:
        session = self.session_of()
        # An access token's audience is the PACS, not a client: it is no hint.
        audience = claims.get("aud")
        return (
            session is not None
            and claims.get("iss") == self.server.deps.settings.oidc_issuer
            and isinstance(audience, str)
            and self.server.query_client(audience) is not None
            and claims.get("sub") == session.get("subject")
        )

    def end_session(self, end_session_request: Any) -> None:
        end_browser_session(self.server.deps, request.cookies.get(SESSION_COOKIE))


def end_browser_session(deps: OidcDeps, session_id: str | None) -> None:
    """Forget a provider session and revoke every token family it signed into."""
    if not session_id:
        return
    for family in deps.state.end_session(session_id):
        deps.state.revoke_family(family, deps.revoked_until())


def signing_keys(codec: TokenCodec) -> tuple[KeySet, KeySet]:
    """(private, public) key sets of the codec's one key, each key carrying its kid."""
    parameters: KeyParameters = {"kid": codec.kid, "use": "sig", "alg": ALGORITHM}
    public = KeySet([RSAKey.import_key(codec.public_key.as_dict(private=False), parameters)])
    if codec.private_key is None:
        return KeySet([]), public
    private = KeySet([RSAKey.import_key(codec.private_key.as_dict(private=True), parameters)])
    return private, public


def create_authorization_server(
    app: Flask,
    deps: OidcDeps,
    session_of: Callable[[], dict[str, Any] | None] = lambda: None,
) -> ZhivaAuthorizationServer:
    """The provider, ready for both services' routes (app.extensions["zhiva_oidc"])."""
    private, public = signing_keys(deps.codec)
    server = ZhivaAuthorizationServer(deps)
    # init_app registers authlib's random-token generator and resets the scopes: ours after.
    server.init_app(app)
    server.scopes_supported = list(SCOPES)
    server.register_token_generator("default", AccessTokenGenerator(deps, private))
    server.register_grant(
        CodeGrant, [S256CodeChallenge(required=True), ZhivaOpenIDCode(deps, private)]
    )
    server.register_grant(ZhivaRefreshTokenGrant)
    server.register_grant(ZhivaDeviceCodeGrant)
    server.register_endpoint(ZhivaRevocationEndpoint(server))
    protector = ResourceProtector()
    protector.register_token_validator(AccessTokenValidator(deps, server))
    server.register_endpoint(ZhivaUserInfoEndpoint(server, resource_protector=protector))
    server.register_endpoint(DeviceEndpoint(server))
    server.register_endpoint(ZhivaEndSessionEndpoint(public, session_of))
    app.extensions["zhiva_oidc"] = server
    return server


def discovery_document(settings: Settings) -> dict[str, Any]:
    """OpenID Connect Discovery 1.0 / RFC 8414 metadata, from the settings alone."""
    issuer = settings.oidc_issuer
    auth_methods = list(CLIENT_AUTH_METHODS)
    return {
        "issuer": issuer,
        "authorization_endpoint": issuer + "/oauth/authorize",
        "token_endpoint": issuer + "/oauth/token",
        "userinfo_endpoint": issuer + "/oauth/userinfo",
        "revocation_endpoint": issuer + "/oauth/revoke",
        "end_session_endpoint": issuer + "/oauth/logout",
        "device_authorization_endpoint": issuer + "/oauth/device",
        "jwks_uri": issuer + "/.well-known/jwks.json",
        "scopes_supported": list(SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": list(GRANT_TYPES),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "code_challenge_methods_supported": ["S256"],
        "prompt_values_supported": ["none", "login"],
        "claims_supported": [
            "sub",
            "iss",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "name",
            "preferred_username",
            "canEditResource",
        ],
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "claims_parameter_supported": False,
    }


__all__ = ["OAuth2Error", "create_authorization_server", "discovery_document"]
