"""The policy engine on the OpenID Connect provider's access tokens (CONTRACT section 7).

Tokens come from the real provider (the login and token apps of one SQLite
database and one Redis, driven by tests/support/oidc.py); the engine is the
policy service's own (`PolicyEngine` with the codec, the `RevocationMirror`
following Redis, `UserTable` and `ClientTable`). An OIDC access token is
accepted exactly like a zhiva access token, role from the user's current
rights, bound to its client's origins; every refusal below has an accepted
twin, so it is the one difference that refuses it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from joserfc import jws
from joserfc.jwk import RSAKey

from services.access.permissions import Role
from services.domain.tokens import TokenCodec, TokenKind
from services.login_service import create_app as create_login
from services.policy_service.decision import (
    USER_CACHE_SECONDS,
    AccessRequest,
    Decision,
    PolicyEngine,
)
from services.stores.accounts import find_user, save_user, set_disabled
from services.stores.clients import ClientTable
from services.stores.oauth_clients import remove_client
from services.stores.oidc_state import digest
from services.stores.revocation import MAX_LAG_SECONDS, RevocationMirror, revoked_key
from services.stores.schema import upgrade
from services.stores.users import UserTable
from services.token_service import create_app as create_token
from tests.support.apps import closing
from tests.support.oidc import (
    BASE_URL,
    CLIENT_ORIGIN,
    PASSWORD,
    SCOPE,
    Provider,
    query_of,
)
from tests.support.processes import wait_until

READ = ("GET", "/studies")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _part(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def claims_of(token: str) -> dict[str, Any]:
    return _part(token, 1)


def header_of(token: str) -> dict[str, Any]:
    return _part(token, 0)


class Clock:
    """The engine's clock, moved on instead of sleeping through its caches."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class World:
    """The provider's two apps and what the policy service reads, for the whole module."""

    login: Any
    token: Any
    provider: Provider = field(init=False)
    browsers: dict[str, Provider] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.provider = Provider(self.login, self.token)
        self.settings = self.token.extensions["zhiva"].settings
        self.signer: TokenCodec = self.token.extensions["zhiva"].codec
        self.users = UserTable(self.settings.database_url)
        self.clients = ClientTable(self.settings.database_url)
        self.mirror = RevocationMirror(self.settings.redis_url, self.settings.redis_key_prefix)
        assert self.mirror.wait_synced(5.0)

    def close(self) -> None:
        self.mirror.stop()
        self.users.close()
        self.clients.close()

    def change(self, action: Callable[[Any], object]) -> None:
        """Change the database as zhiva-admin does (SQLAlchemy, one transaction)."""
        database = self.provider.database()
        try:
            with database.session() as session:
                action(session)
        finally:
            database.engine.dispose()

    def user(self, username: str, *, can_edit: bool = False, is_admin: bool = False) -> None:
        self.change(
            lambda session: save_user(
                session,
                name=username.title(),
                username=username,
                password=PASSWORD,
                can_edit=can_edit,
                is_admin=is_admin,
            )
        )

    def tokens(self, username: str, client_id: str = "app", scope: str = SCOPE) -> dict[str, Any]:
        """Tokens from the code flow; each user signs in once (bcrypt), then the provider
        session answers the next authorize without the form."""
        browser = self.browsers.get(username)
        query = self.provider.authorize_query(client_id=client_id, scope=scope)
        if browser is None:
            browser = self.browsers[username] = Provider(self.login, self.token)
            code, _ = browser.code(query, username=username)
        else:
            response = browser.authorize(query)
            assert response.status_code == 302, response.text
            code = query_of(response.headers["Location"])["code"]
        response = browser.exchange(code, query["_verifier"], client_id=client_id)
        assert response.status_code == 200, response.text
        return response.get_json()

    def access(self, username: str, client_id: str = "app") -> str:
        return self.tokens(username, client_id)["access_token"]

    def revoke(self, token: str, hint: str, client_id: str = "app") -> None:
        """RFC 7009, through the token endpoint, as the client does."""
        response = self.provider.machine.post(
            "/auth/oauth/revoke",
            data={"token": token, "token_type_hint": hint, "client_id": client_id},
            base_url=BASE_URL,
        )
        assert response.status_code == 200, response.text

    def mirrored(self, jti: str) -> None:
        mirror = self.mirror
        wait_until(lambda: mirror.is_revoked(jti), MAX_LAG_SECONDS, "revocation mirrored", 0.005)

    def sign(
        self, header: dict[str, Any], claims: dict[str, Any], key: RSAKey | None = None
    ) -> str:
        """A JWS of exactly this header and these claims (no `typ` added)."""
        payload = json.dumps(claims).encode()
        return jws.serialize_compact(header, payload, key or self.signer.private_key)

    def forge(self, token: str, header: dict[str, Any] | None = None, **claims: Any) -> str:
        """`token` re-signed with the codec's own key, header and claims changed (None
        removes one)."""
        new_header = {k: v for k, v in {**header_of(token), **(header or {})}.items() if v}
        new_claims = {k: v for k, v in {**claims_of(token), **claims}.items() if v is not None}
        return self.sign(new_header, new_claims)


@pytest.fixture(scope="module")
def world(
    config_dir: Path, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    state_dir = tmp_path_factory.mktemp("oidc-policy")
    database_url = f"sqlite:///{state_dir / 'zhiva.db'}"
    upgrade(database_url)
    config = {
        "CONFIG_DIR": str(config_dir),
        "STATE_DIR": str(state_dir),
        "DATABASE_URL": database_url,
        "REDIS_PORT": redis_server.port,
        "REDIS_PASSWORD": redis_server.password,
        "REDIS_KEY_PREFIX": f"test-{uuid.uuid4().hex}:",
        "TESTING": True,
    }
    with closing(create_login(config)) as login, closing(create_token(config)) as token:
        world = World(login, token)
        world.config = config
        try:
            world.provider.client()
            world.user("viewer")
            world.user("editor", can_edit=True)
            world.user("admin", can_edit=True, is_admin=True)
            yield world
        finally:
            world.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(world: World, clock: Clock) -> PolicyEngine:
    """The policy service's engine, with fresh caches for each test."""
    return PolicyEngine(
        TokenCodec.from_settings(world.settings, can_sign=False),
        world.mirror,
        world.users,
        clients=world.clients,
        clock=clock,
    )


def decide(
    engine: PolicyEngine,
    token: str | None,
    method: str = READ[0],
    path: str = READ[1],
    origin: str | None = None,
) -> Decision:
    return engine.decide(AccessRequest(token=token, method=method, path=path, origin=origin))


def refused(decision: Decision, reason: str, status: int = 403) -> bool:
    """A refusal for exactly `reason` (or one starting with `reason…` when it ends in ':')."""
    matches = (
        decision.reason.startswith(reason) if reason.endswith(":") else decision.reason == reason
    )
    return not decision.granted and decision.status == status and matches and decision.role is None


# --- roles ------------------------------------------------------------------------------------

ROUTES = [
    ("GET", "/studies", Role.VIEWER),
    ("GET", "/dicom-web/studies", Role.VIEWER),
    ("GET", "/pacs/studies", Role.VIEWER),
    ("DELETE", "/studies/x", Role.EDITOR),
    ("POST", "/instances", Role.EDITOR),
    ("POST", "/pacs/studies", Role.EDITOR),
    ("GET", "/modalities", Role.ADMIN),
    ("POST", "/tools/reset", Role.ADMIN),
]


@pytest.mark.parametrize("username", ["viewer", "editor", "admin"])
def test_the_users_role_decides_what_its_token_may_do(world: World, engine, username):
    token = world.access(username)
    role = Role[username.upper()]
    claims = claims_of(token)
    for origin in (None, CLIENT_ORIGIN):
        for method, path, least in ROUTES:
            decision = decide(engine, token, method, path, origin)
            if role >= least:
                assert decision.granted, (method, path, decision.reason)
                assert (decision.status, decision.reason) == (200, "granted")
                assert decision.role is role and decision.required is least
                assert decision.user == username and decision.jti == claims["jti"]
                assert 1 <= decision.validity <= 2
            else:
                reason = f"needs {least.name.lower()}, token is {username}"
                assert refused(decision, reason), (method, path, decision)
                assert decision.user == username


def test_the_role_is_the_lower_of_token_and_user_now(world: World, engine, clock):
    world.user("demoted", can_edit=True, is_admin=True)
    world.user("promoted")
    high, low = world.access("demoted"), world.access("promoted")
    assert decide(engine, high, "POST", "/tools/reset").granted
    assert decide(engine, high, "DELETE", "/studies/x").granted
    world.change(lambda session: setattr(find_user(session, "demoted"), "is_admin", False))
    world.change(lambda session: setattr(find_user(session, "promoted"), "can_edit", True))
    clock.advance(USER_CACHE_SECONDS)  # the user cache's whole life: read again
    assert refused(decide(engine, high, "POST", "/tools/reset"), "needs admin, token is editor")
    assert decide(engine, high, "DELETE", "/studies/x").role is Role.EDITOR
    world.change(lambda session: setattr(find_user(session, "demoted"), "can_edit", False))
    engine.clear_caches()
    assert refused(decide(engine, high, "DELETE", "/studies/x"), "needs editor, token is viewer")
    assert decide(engine, high).role is Role.VIEWER
    # A promotion does not widen a token already issued; a new one carries it.
    assert refused(decide(engine, low, "DELETE", "/studies/x"), "needs editor, token is viewer")
    assert decide(engine, world.access("promoted"), "DELETE", "/studies/x").granted


# --- refusals, each with its accepted twin ------------------------------------------------------


@dataclass
class Row:
    """`control` is granted and `refused` denied for `reason`; `change`, when given, turns
    `refused` from granted into denied (it is decided before and after)."""

    control: AccessRequest
    refused: AccessRequest
    reason: str
    change: Callable[[], None] | None = None
    status: int = 403


def _read(token: str, origin: str | None = None) -> AccessRequest:
    return AccessRequest(token=token, method=READ[0], path=READ[1], origin=origin)


def _hs256(world: World, token: str) -> str:
    # The classic confusion: HS256 keyed with the public key's PEM, our kid and typ.
    header = {**header_of(token), "alg": "HS256"}
    signing_input = f"{_b64(json.dumps(header).encode())}.{token.split('.')[1]}"
    secret = world.signer.public_key.as_pem(private=False)
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


def _none(token: str) -> str:
    header = {**header_of(token), "alg": "none"}
    return f"{_b64(json.dumps(header).encode())}.{token.split('.')[1]}."


def _forged(world: World, reason: str, header: dict[str, Any] | None = None, **claims: Any) -> Row:
    """The twin is the same token re-signed unchanged: the forging itself refuses nothing."""
    token = world.access("viewer")
    forged = world.forge(token, header, **claims)
    return Row(_read(world.forge(token)), _read(forged), "invalid token: " + reason)


def _id_token(world: World) -> Row:
    tokens = world.tokens("viewer")
    # typ JWT: judged as a zhiva token, which it is not.
    reason = "invalid token: claims: missing_claim Missing claim: 'jti,kind,username'"
    return Row(_read(tokens["access_token"]), _read(tokens["id_token"]), reason)


def _refresh_token(world: World) -> Row:
    tokens = world.tokens("viewer")
    # Opaque: no JWT at all.
    reason = "invalid token: signature or format: decode_error"
    return Row(_read(tokens["access_token"]), _read(tokens["refresh_token"]), reason)


def _other_key(world: World) -> Row:
    token = world.access("viewer")
    other = world.sign(header_of(token), claims_of(token), RSAKey.generate_key(2048))
    return Row(
        _read(world.forge(token)), _read(other), "invalid token: signature or format: bad_signature"
    )


def _expired(world: World) -> Row:
    token = world.access("viewer")
    past = int(time.time()) - 3600
    forged = world.forge(token, iat=past - 60, exp=past)
    return Row(_read(world.forge(token)), _read(forged), "token expired", status=401)


def _foreign_origin(world: World) -> Row:
    token = world.access("viewer")
    return Row(
        _read(token, CLIENT_ORIGIN),
        _read(token, "https://evil.example"),
        "invalid token: bound to another origin",
    )


def _removed_client(world: World) -> Row:
    world.provider.client("gone")
    token = world.access("viewer", "gone")
    return Row(
        _read(world.access("viewer")),
        _read(token),
        "client removed",
        lambda: world.change(lambda session: remove_client(session, "gone")),
    )


def _re_added_client(world: World) -> Row:
    world.provider.client("again")
    token = world.access("viewer", "again")

    def re_add() -> None:
        time.sleep(1.01)  # registrations are compared with tokens' `iat`, by the second
        world.change(lambda session: remove_client(session, "again"))
        world.provider.client("again")

    return Row(
        _read(world.access("viewer")),
        _read(token),
        "client removed (registered again since)",
        re_add,
    )


def _disabled_user(world: World) -> Row:
    world.user("dora")
    return Row(
        _read(world.access("viewer")),
        _read(world.access("dora")),
        "user disabled",
        lambda: world.change(lambda session: set_disabled(session, "dora")),
    )


def _replaced_user(world: World) -> Row:
    world.user("rita")
    token = world.access("rita")

    def replace() -> None:
        world.change(lambda session: session.delete(find_user(session, "rita")))
        world.user("rita")  # the same username, a new account: a new subject, generation 0

    return Row(_read(world.access("viewer")), _read(token), "user replaced", replace)


def _revoked_generation(world: World) -> Row:
    from services.stores.accounts import revoke_all_tokens

    world.user("gena")
    return Row(
        _read(world.access("viewer")),
        _read(world.access("gena")),
        "token revoked (generation)",
        lambda: world.change(lambda session: revoke_all_tokens(session, "gena")),
    )


def _revoked_jti(world: World) -> Row:
    tokens = world.tokens("viewer")
    token = tokens["access_token"]

    def revoke() -> None:
        world.revoke(token, "access_token")
        world.mirrored(claims_of(token)["jti"])

    # The twin: the next token of the same family.
    newer = world.provider.refresh(tokens["refresh_token"]).get_json()["access_token"]
    return Row(_read(newer), _read(token), "token revoked", revoke)


def _revoked_family(world: World) -> Row:
    tokens = world.tokens("viewer")

    def revoke() -> None:
        world.revoke(tokens["refresh_token"], "refresh_token")
        world.mirrored("fam:" + claims_of(tokens["access_token"])["fam"])

    # The twin: the same user's other sign-in, another family.
    return Row(
        _read(world.access("viewer")),
        _read(tokens["access_token"]),
        "token revoked (family)",
        revoke,
    )


def _reused_refresh(world: World) -> Row:
    tokens = world.tokens("viewer")

    def reuse() -> None:
        assert world.provider.refresh(tokens["refresh_token"]).status_code == 200
        assert world.provider.refresh(tokens["refresh_token"]).status_code == 400
        world.mirrored("fam:" + claims_of(tokens["access_token"])["fam"])

    return Row(
        _read(world.access("viewer")),
        _read(tokens["access_token"]),
        "token revoked (family)",
        reuse,
    )


def _reused_code(world: World) -> Row:
    world.tokens("viewer")  # signed in: the session answers with a code
    browser = world.browsers["viewer"]
    query = world.provider.authorize_query()
    code = query_of(browser.authorize(query).headers["Location"])["code"]
    first = browser.exchange(code, query["_verifier"])
    assert first.status_code == 200
    token = first.get_json()["access_token"]

    def reuse() -> None:
        assert browser.exchange(code, query["_verifier"]).status_code == 400
        world.mirrored("fam:" + claims_of(token)["fam"])

    return Row(_read(world.access("viewer")), _read(token), "token revoked (family)", reuse)


def _logged_out(world: World) -> Row:
    world.user("lou")
    tokens = world.tokens("lou")
    browser = world.browsers["lou"]

    def logout() -> None:
        hint = urlencode({"id_token_hint": tokens["id_token"]})
        response = browser.browser.get("/auth/oauth/logout?" + hint, base_url=BASE_URL)
        assert response.status_code in (200, 302)
        world.mirrored("fam:" + claims_of(tokens["access_token"])["fam"])

    return Row(
        _read(world.access("viewer")),
        _read(tokens["access_token"]),
        "token revoked (family)",
        logout,
    )


CLAIM = "claims: invalid_claim Invalid claim: "
MISSING = "claims: missing_claim Missing claim: "
ROWS: dict[str, Callable[[World], Row]] = {
    "id token": _id_token,
    "refresh token": _refresh_token,
    "wrong iss": lambda w: _forged(w, CLAIM + "'iss'", iss="https://evil.example/auth"),
    "zhiva iss": lambda w: _forged(w, CLAIM + "'iss'", iss=w.settings.jwt_issuer),
    "wrong aud": lambda w: _forged(w, CLAIM + "'aud'", aud="https://evil.example/zhiva/pacs"),
    "client aud": lambda w: _forged(w, CLAIM + "'aud'", aud="app"),
    "no aud": lambda w: _forged(w, MISSING + "'aud'", aud=None),
    "no client_id": lambda w: _forged(w, MISSING + "'client_id'", client_id=None),
    "no fam": lambda w: _forged(w, MISSING + "'fam'", fam=None),
    "gen as text": lambda w: _forged(w, "claim gen missing or of the wrong type", gen="0"),
    "typ JWT": lambda w: _forged(w, MISSING + "'kind,username'", {"typ": "JWT"}),
    "no typ": lambda w: _forged(w, "unexpected token type", {"typ": None}),
    "typ media type": lambda w: _forged(w, "unexpected token type", {"typ": "application/at+jwt"}),
    "other kid": lambda w: _forged(w, "unexpected header", {"kid": "other"}),
    "extra header": lambda w: _forged(w, "unexpected header", {"jku": "https://evil.example/k"}),
    "alg none": lambda w: Row(
        _read(w.access("viewer")),
        _read(_none(w.access("viewer"))),
        "invalid token: signature or format: unsupported_algorithm",
    ),
    "HS256": lambda w: Row(
        _read(w.access("viewer")),
        _read(_hs256(w, w.access("viewer"))),
        "invalid token: signature or format: unsupported_algorithm",
    ),
    "other key": _other_key,
    "expired": _expired,
    "foreign origin": _foreign_origin,
    "removed client": _removed_client,
    "re-added client": _re_added_client,
    "disabled user": _disabled_user,
    "replaced user": _replaced_user,
    "revoke-tokens": _revoked_generation,
    "revoked jti": _revoked_jti,
    "revoked family": _revoked_family,
    "refresh reused": _reused_refresh,
    "code reused": _reused_code,
    "logged out": _logged_out,
}


@pytest.mark.parametrize("name", list(ROWS))
def test_refused_with_its_accepted_twin(world: World, engine, clock, name):
    row = ROWS[name](world)
    if row.change is not None:
        before = engine.decide(row.refused)
        assert before.granted, before.reason
        row.change()
        clock.advance(USER_CACHE_SECONDS)  # past the user and client caches
    control = engine.decide(row.control)
    assert control.granted, control.reason
    decision = engine.decide(row.refused)
    assert refused(decision, row.reason, row.status), decision
    # A refusal is kept: asked again (the verification cache), still refused.
    assert refused(engine.decide(row.refused), row.reason, row.status)


def test_a_family_revoked_in_its_last_hour_outlives_its_access_tokens(world: World):
    """RFC 7009 revocation of a refresh token holds until the last access token the family
    was given expires, not only until the family's end: a token issued just before the
    end lives an hour past it."""
    tokens = world.tokens("viewer")
    access = claims_of(tokens["access_token"])
    state = world.token.extensions["zhiva_oidc"].deps.state
    record = f"{state.prefix}rt:{digest(tokens['refresh_token'])}"
    ends = int(time.time()) + 60  # the family ends in a minute
    state.client.hset(record, "family_expires_at", str(ends))
    world.revoke(tokens["refresh_token"], "refresh_token")
    key = revoked_key(world.settings.redis_key_prefix, "fam:" + access["fam"])
    assert state.client.ttl(key) >= access["exp"] - time.time()
    entries = state.client.xrange(world.settings.redis_key_prefix + "revocations")
    exp = [fields["exp"] for _, fields in entries if fields["jti"] == "fam:" + access["fam"]]
    assert exp and int(exp[-1]) >= access["exp"]


# --- zhiva tokens, unchanged ----------------------------------------------------------------


def test_zhiva_access_tokens_work_as_before(world: World, engine):
    editor = world.users.find("editor")
    assert editor is not None
    token, claims = world.signer.issue(TokenKind.ACCESS, editor, audience=CLIENT_ORIGIN)
    decision = decide(engine, token, "DELETE", "/studies/x", CLIENT_ORIGIN)
    assert decision.granted and decision.role is Role.EDITOR
    assert (decision.user, decision.jti) == ("editor", claims["jti"])
    assert refused(decide(engine, token, "POST", "/tools/reset"), "needs admin, token is editor")
    foreign = decide(engine, token, origin="https://evil.example")
    assert refused(foreign, "invalid token: bound to another origin")
    refresh, _ = world.signer.issue(TokenKind.REFRESH, editor)
    assert refused(decide(engine, refresh), "invalid token:")


# --- the policy service's two doors ------------------------------------------------------------


def test_the_policy_service_takes_them_at_both_doors(world: World):
    """nginx's auth_request (Authorization: Bearer, as OHIF sends it) and Orthanc's webhook."""
    from werkzeug.test import Client

    from services.policy_service import create_app as create_policy

    app = create_policy(world.config)
    try:
        client = Client(app)
        token = world.access("editor")

        def nginx(method: str, path: str, origin: str | None = None) -> int:
            headers = {
                "X-Original-Method": method,
                "X-Original-URI": "/zhiva" + path,
                "Authorization": f"Bearer {token}",
            }
            if origin:
                headers["Origin"] = origin
            return client.get("/authorize", headers=headers).status_code

        def webhook(method: str, path: str, origin: str | None = None) -> bool:
            body = {"method": method.lower(), "level": "system", "uri": path}
            body.update({"token-key": "authorization", "token-value": f"Bearer {token}"})
            if origin:
                body["origin"] = origin
            response = client.post("/webhook", json=body)
            assert response.status_code == 200
            return bool(response.get_json()["granted"])

        assert nginx("DELETE", "/studies/x", CLIENT_ORIGIN) in (200, 204)
        assert webhook("DELETE", "/studies/x", CLIENT_ORIGIN)
        assert nginx("GET", "/dicom-web/studies") in (200, 204)
        assert nginx("GET", "/studies", "https://evil.example") == 403
        assert not webhook("GET", "/studies", "https://evil.example")
        assert nginx("POST", "/tools/reset") == 403
        assert not webhook("POST", "/tools/reset")
    finally:
        app.close()
