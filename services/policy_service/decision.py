"""The one access decision behind the Orthanc webhook and nginx's auth_request.

`PolicyEngine.decide()` starts from "deny" and grants only when every check
passed: token kind (access, or an auth token not yet redeemed), signature,
expiry, origin binding, revocation (Redis), the user still enabled with the
token's generation, and the role against the permission table. Any exception
is a deny, logged.

Every request that reaches Orthanc passes here, so the expensive parts are
cached in-process, each for less than the 5 seconds a revocation may take:
token verification by a digest of (token, origin) until the token's expiry, a user's
state for USER_CACHE_SECONDS. Revocations come from the service's
RevocationMirror (services/stores/revocation.py), at most MAX_LAG_SECONDS
behind Redis. Callers may cache a grant for `validity` seconds on top, so the
worst delay is the larger of those two plus MAX_VALIDITY_SECONDS.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from services.access.permissions import Role, required_role, role_of
from services.access.shares import SharedStudy, Verdict, orthanc_arguments, share_verdict
from services.domain.clients import ClientRecord, client_refusal
from services.domain.tokens import (
    TokenCodec,
    TokenExpired,
    TokenInvalid,
    TokenKind,
    TokenMissing,
)
from services.domain.user import UserRecord
from services.stores.orthanc import OrthancUnavailable
from services.stores.revocation import StoreUnavailable
from services.stores.users import UserTable

log = logging.getLogger("zhiva.policy")

# How long a caller (Orthanc plugin, nginx) may reuse a grant.
MAX_VALIDITY_SECONDS = 2
USER_CACHE_SECONDS = 2.0
CACHE_ENTRIES = 20_000
# An entry is a SHA-256 of (token, origin) and what a decision reads from the token
# (VerifiedToken), about 0.6 KB whatever a client sends: the cache stays near 2.5 MB.
TOKEN_CACHE_ENTRIES = 4_096
PACS_TOKEN_KINDS = (TokenKind.ACCESS, TokenKind.AUTH, TokenKind.SHARE)
# An Orthanc resource's parent never changes: its study is remembered this long.
RESOURCE_CACHE_SECONDS = 24 * 3600.0

K = TypeVar("K")
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """A small LRU dictionary whose entries carry their own deadline (the engine's clock)."""

    def __init__(self, max_entries: int = CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, now: float) -> V | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            if entry[0] <= now:
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return entry[1]

    def put(self, key: K, value: V, deadline: float) -> None:
        with self._lock:
            self._data[key] = (deadline, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class Clients(Protocol):
    """ClientTable (services/stores/clients.py): a registered OpenID Connect client."""

    def find(self, client_id: str) -> ClientRecord | None: ...


class StudyResolver(Protocol):
    """OrthancResources (services/stores/orthanc.py): the study of a series or an instance."""

    def study_of(self, level: str, orthanc_id: str) -> str | None:
        """Raises OrthancUnavailable when Orthanc cannot say."""
        ...


class Revocations(Protocol):
    """RevocationMirror in the service; RevocationStore (one Redis call each) also fits."""

    def is_revoked(self, jti: str) -> bool:
        """Raises StoreUnavailable when it cannot say."""
        ...


@dataclass(frozen=True)
class AccessRequest:
    """What is asked: who (token, origin, address), which method on which Orthanc path."""

    token: str | None
    method: str
    path: str  # Orthanc-relative path, raw (percent-encoded), without the query
    origin: str | None = None
    client: str | None = None
    level: str = "system"
    resource: str | None = None
    via: str = "webhook"
    query: str = ""  # the raw query string: what a share token's QIDO names


@dataclass(frozen=True)
class Decision:
    granted: bool
    status: int  # 200 grant, 401 missing/expired token, 403 anything else
    reason: str
    validity: int = 0
    user: str | None = None
    jti: str | None = None
    required: Role | None = None
    # The token's effective role, on grants: lets a caller judge the token's next
    # requests itself, with the same table, for `validity` seconds.
    role: Role | None = None
    # A share token's grant: the StudyInstanceUID it is good for (no role: it reads one
    # study, so a caller may reuse the grant only for that study's reads).
    study: str | None = None


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """What a decision reads from a verified token's claims, and all the cache keeps of it.

    Only what a decision reads, and a digest as the key, so an entry's size does not grow
    with what a client sends (a forged token up to the codec's 8 KB limit, a long Origin;
    docs/BENCHMARKS.md).
    """

    username: str
    jti: str
    kind: TokenKind
    generation: int
    can_edit: bool
    is_admin: bool
    expires: float
    # OIDC access tokens only (services/web/oidc.py): the client, the refresh-token family
    # and the account's subject the token was issued to.
    client_id: str | None = None
    family: str | None = None
    subject: str | None = None
    issued_at: float = 0.0
    # Share tokens only: the study they read.
    study: SharedStudy | None = None

    @classmethod
    def of(cls, claims: dict[str, Any]) -> VerifiedToken:
        if "client_id" in claims:  # an OIDC access token (the codec checked which it is)
            return cls(
                username=sys.intern(claims["preferred_username"]),
                jti=claims["jti"],
                kind=TokenKind.ACCESS,
                generation=claims["gen"],
                can_edit=claims["canEditResource"],
                is_admin=claims["isAdmin"],
                expires=float(claims["exp"]),
                client_id=sys.intern(claims["client_id"]),
                family=claims["fam"],
                subject=claims["sub"],
                issued_at=float(claims["iat"]),
            )
        kind = TokenKind(claims["kind"])
        study = None
        if kind is TokenKind.SHARE:
            uid, orthanc_id = claims.get("study"), claims.get("studyId")
            if not (isinstance(uid, str) and isinstance(orthanc_id, str)):
                raise TokenInvalid("a share token without its study")
            study = SharedStudy(uid, orthanc_id)
        return cls(
            # One string per user, however many of the user's tokens are cached.
            username=sys.intern(claims["username"]),
            jti=claims["jti"],
            kind=kind,
            generation=claims["gen"],
            can_edit=claims["canEditResource"],
            is_admin=claims["isAdmin"],
            expires=float(claims["exp"]),
            study=study,
        )


def verification_key(token: str, origin: str | None) -> bytes:
    """The verification cache's key: SHA-256 of the token and the Origin (the token's length
    first, so no two pairs hash the same input), so that an entry's size does not grow with
    what a client sends. Any text is hashed, surrogates too: the codec judges it."""
    token_bytes = token.encode("utf-8", "surrogatepass")
    origin_bytes = (origin or "").encode("utf-8", "surrogatepass")
    return hashlib.sha256(b"%d:" % len(token_bytes) + token_bytes + origin_bytes).digest()


# Cached for a username that has no user, so the policy does not ask again at once.
_NO_USER = UserRecord(
    "", "", "", can_edit=False, is_admin=False, disabled=True, token_generation=-1, subject=""
)


# Cached for a client id that names no client, so the policy does not ask again at once.
_NO_CLIENT = ClientRecord("", None, (), ())


class PolicyEngine:
    def __init__(
        self,
        codec: TokenCodec,
        revocations: Revocations,
        users: UserTable,
        *,
        clients: Clients | None = None,
        resources: StudyResolver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.codec = codec
        self.revocations = revocations
        self.users = users
        self.clients = clients
        self.resources = resources
        self.clock = clock
        # By (level, Orthanc ID): the Orthanc ID of its study ("" when it has none).
        self._studies: TTLCache[tuple[str, str], str] = TTLCache()
        # By client id: its record, or _NO_CLIENT for a removed one.
        self._clients: TTLCache[str, ClientRecord] = TTLCache()
        # By verification_key(token, origin): a valid token's VerifiedToken, or the reason it
        # was refused ("expired", or "invalid" and the codec's reason).
        self._tokens: TTLCache[bytes, VerifiedToken | tuple[str, str]] = TTLCache(
            TOKEN_CACHE_ENTRIES
        )
        self._users: TTLCache[str, UserRecord] = TTLCache()

    def clear_caches(self) -> None:
        for cache in (self._tokens, self._users, self._clients, self._studies):
            cache.clear()

    def decide(self, request: AccessRequest) -> Decision:
        """Grant only after every check passed; every failure, expected or not, is a deny."""
        try:
            return self._decide(request)
        except StoreUnavailable:
            log.error("redis unavailable: denying %s %s", request.method, request.path)
            return Decision(False, 403, "token store unavailable")
        except Exception:  # noqa: BLE001 - fail closed, with the traceback in the log
            log.exception("policy decision failed: denying %s %s", request.method, request.path)
            return Decision(False, 403, "internal error")

    def _decide(self, request: AccessRequest) -> Decision:
        required = required_role(request.method, request.path)
        if required is Role.NONE:
            return Decision(True, 200, "static file", MAX_VALIDITY_SECONDS, required=required)

        now = self.clock()
        try:
            token = self._verify(request.token, request.origin, now)
        except TokenMissing:
            return Decision(False, 401, "missing token", required=required)
        except TokenExpired:
            return Decision(False, 401, "token expired", required=required)
        except TokenInvalid as error:
            return Decision(False, 403, f"invalid token: {error.reason}", required=required)

        user, jti = token.username, token.jti

        def deny(reason: str) -> Decision:
            return Decision(False, 403, reason, user=user, jti=jti, required=required)

        if required is Role.NOBODY:
            return deny("route refused for every token")
        if self.revocations.is_revoked(jti):
            used = token.kind is TokenKind.AUTH
            return deny("auth token already redeemed" if used else "token revoked")
        if token.study is not None:
            return self._share_decision(request, token, required, now)
        if token.client_id is not None:
            refused = self._oidc_refusal(token, request.origin, now)
            if refused:
                return deny(refused)
        state = self._user_state(user, now)
        if state is _NO_USER:
            return deny("user unknown")
        if state.disabled:
            return deny("user disabled")
        if state.token_generation != token.generation:
            return deny("token revoked (generation)")
        if token.subject is not None and state.subject != token.subject:
            return deny("user replaced")
        # The smaller of what the token says and what the user is now: a demotion bites at once.
        role = min(
            role_of(token.can_edit, token.is_admin),
            role_of(state.can_edit, state.is_admin),
        )
        if role < required:
            return deny(f"needs {required.name.lower()}, token is {role.name.lower()}")
        validity = max(0, min(MAX_VALIDITY_SECONDS, int(token.expires - now)))
        return Decision(
            True, 200, "granted", validity, user=user, jti=jti, required=required, role=role
        )

    def _share_decision(
        self, request: AccessRequest, token: VerifiedToken, required: Role, now: float
    ) -> Decision:
        """A share token reads its study and nothing else (services/access/shares.py). It
        does not act as its creator: no user's state is read."""
        assert token.study is not None

        def deny(reason: str) -> Decision:
            return Decision(
                False,
                403,
                f"share: {reason}",
                user=token.username,
                jti=token.jti,
                required=required,
            )

        judgement = share_verdict(
            request.method, request.path, orthanc_arguments(request.query), token.study
        )
        if judgement.verdict is Verdict.DENY:
            return deny(judgement.reason)
        for level, orthanc_id in judgement.resources:
            try:
                study = self._study_of(level, orthanc_id, now)
            except OrthancUnavailable:
                return deny("the PACS does not answer")
            if study != token.study.orthanc_id:
                return deny("another study")
        validity = max(0, min(MAX_VALIDITY_SECONDS, int(token.expires - now)))
        return Decision(
            True,
            200,
            "granted (share)",
            validity,
            user=token.username,
            jti=token.jti,
            required=required,
            study=token.study.uid,
        )

    def _study_of(self, level: str, orthanc_id: str, now: float) -> str:
        key = (level, orthanc_id)
        study = self._studies.get(key, now)
        if study is None:
            if self.resources is None:
                return ""
            study = self.resources.study_of(level, orthanc_id) or ""
            # An unknown resource is asked about again soon: it may be being uploaded.
            ttl = RESOURCE_CACHE_SECONDS if study else USER_CACHE_SECONDS
            self._studies.put(key, study, now + ttl)
        return study

    def _oidc_refusal(self, token: VerifiedToken, origin: str | None, now: float) -> str | None:
        """Why an OIDC access token may not be used here, or None: its client must still be
        registered, a browser's Origin one of its redirect URIs', its family not revoked."""
        assert token.client_id is not None and token.family is not None
        if self.revocations.is_revoked("fam:" + token.family):
            return "token revoked (family)"
        return client_refusal(self._client(token.client_id, now), token.issued_at, origin)

    def _client(self, client_id: str, now: float) -> ClientRecord | None:
        cached = self._clients.get(client_id, now)
        if cached is None:
            record = self.clients.find(client_id) if self.clients is not None else None
            cached = record or _NO_CLIENT
            self._clients.put(client_id, cached, now + USER_CACHE_SECONDS)
        return None if cached is _NO_CLIENT else cached

    def _verify(self, token: str | None, origin: str | None, now: float) -> VerifiedToken:
        if not token:
            raise TokenMissing()
        key = verification_key(token, origin)
        cached = self._tokens.get(key, now)
        if cached is None:
            try:
                claims = self.codec.verify_for_pacs(token, PACS_TOKEN_KINDS, origin=origin or None)
            except TokenExpired:
                self._tokens.put(key, ("expired", ""), now + 3600)
                raise
            except TokenInvalid as error:
                # A forged token stays forged: remembering it spares the RSA check.
                self._tokens.put(key, ("invalid", error.reason), now + 60)
                raise
            try:
                verified = VerifiedToken.of(claims)
            except TokenInvalid as error:
                self._tokens.put(key, ("invalid", error.reason), now + 60)
                raise
            if verified.expires > now:
                self._tokens.put(key, verified, verified.expires)
            return verified
        if isinstance(cached, tuple):
            # A new exception each time: re-raising one object would grow its traceback.
            raise TokenExpired() if cached[0] == "expired" else TokenInvalid(cached[1])
        return cached

    def _user_state(self, username: str, now: float) -> UserRecord:
        """The user as the database has it now (for USER_CACHE_SECONDS), or _NO_USER."""
        state = self._users.get(username, now)
        if state is None:
            state = self.users.find(username) or _NO_USER
            self._users.put(username, state, now + USER_CACHE_SECONDS)
        return state
