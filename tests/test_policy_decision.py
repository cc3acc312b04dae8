"""The access decision through both endpoints: the Orthanc webhook and nginx's auth_request.

Real Redis, real SQLite, real RS256 tokens; Werkzeug's test client stands in
for the HTTP callers only (Orthanc and nginx are exercised in
test_policy_orthanc.py).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import random
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from werkzeug.test import Client

from services.access.permissions import (
    SHARED_READ_METHODS,
    Role,
    is_shared_read,
    readings,
    required_role,
)
from services.domain.tokens import MAX_TOKEN_LENGTH, TokenCodec, TokenKind
from services.policy_service import create_app
from services.policy_service.decision import (
    MAX_VALIDITY_SECONDS,
    TOKEN_CACHE_ENTRIES,
    AccessRequest,
)
from services.settings import load_settings
from services.stores.accounts import identity, revoke_all_tokens, save_user, set_disabled
from services.stores.db import Database
from services.stores.revocation import MAX_LAG_SECONDS, RevocationStore, redis_client
from services.stores.schema import upgrade
from services.stores.users import UserTable
from tests.support.processes import wait_until

PASSWORD = "Str0ng-Passw0rd!"
ROLES = ("viewer", "editor", "admin")
ORIGIN = "https://viewer.zhiva.ai"

# (name, method, Orthanc path, least role). Resource ids are made up: only the decision is tested.
STUDY = "6e2c0ec2-5d99e4d5-7b3d8a51-37ef2a35-9f1b1d8c"
ROUTES = [
    ("qido studies", "GET", "/pacs/studies", Role.VIEWER),
    ("qido series", "GET", "/pacs/studies/1.2.3/series", Role.VIEWER),
    ("wado instance", "GET", "/pacs/studies/1.2.3/series/4.5/instances/6.7", Role.VIEWER),
    ("wado frames", "GET", "/pacs/studies/1.2.3/series/4.5/instances/6.7/frames/1", Role.VIEWER),
    ("instance file", "GET", f"/instances/{STUDY}/file", Role.VIEWER),
    ("system", "GET", "/system", Role.VIEWER),
    ("tools find", "POST", "/tools/find", Role.VIEWER),
    ("tools lookup", "POST", "/tools/lookup", Role.VIEWER),
    ("study archive", "GET", f"/studies/{STUDY}/archive", Role.VIEWER),
    ("create archive", "POST", "/tools/create-archive", Role.VIEWER),
    ("upload", "POST", "/instances", Role.EDITOR),
    ("stow", "POST", "/pacs/studies", Role.EDITOR),
    ("stow study", "POST", "/pacs/studies/1.2.3", Role.EDITOR),
    ("modify", "POST", f"/studies/{STUDY}/modify", Role.EDITOR),
    ("anonymize", "POST", f"/studies/{STUDY}/anonymize", Role.EDITOR),
    ("delete", "DELETE", f"/studies/{STUDY}", Role.EDITOR),
    ("list modalities", "GET", "/modalities", Role.ADMIN),
    ("echo modality", "POST", "/modalities/pacs/echo", Role.ADMIN),
    ("add modality", "PUT", "/modalities/pacs", Role.ADMIN),
    ("peers", "PUT", "/peers/other", Role.ADMIN),
    ("reset", "POST", "/tools/reset", Role.ADMIN),
    ("shutdown", "POST", "/tools/shutdown", Role.ADMIN),
    ("log level", "PUT", "/tools/log-level", Role.ADMIN),
    ("cancel job", "POST", "/jobs/1234/cancel", Role.ADMIN),
    ("execute script", "POST", "/tools/execute-script", Role.NOBODY),
]

# Spellings of write routes that must never be judged as anything weaker.
SPELLINGS = [  # (the canonical route it spells, method, path)
    ("upload", "POST", "//instances"),
    ("upload", "POST", "/instances/"),
    ("upload", "POST", "/INSTANCES"),
    ("upload", "POST", "/Instances//"),
    ("upload", "POST", "/%69nstances"),
    ("upload", "POST", "/./instances"),
    ("upload", "POST", "/tools/find/../../instances"),
    ("upload", "POST", "/tools/find/%2e%2e/%2E%2E/instances"),
    ("upload", "POST", "/tools/find/..%2F..%2Finstances"),
    ("upload", "POST", "/tools%2Ffind%2F..%2F..%2Finstances"),
    ("upload", "POST", "/instances%2F..%2Ftools%2Ffind"),
    ("upload", "POST", "/instances/../tools/find"),
    ("upload", "POST", "/instances;/tools/find"),
    ("upload", "POST", "/instances%3F/tools/find"),
    ("upload", "POST", "/instances%252F..%252Ftools%252Ffind"),
    ("upload", "POST", "/instances\\..\\tools\\find"),
    ("stow", "POST", "/PACS/studies/"),
    ("stow", "POST", "//pacs//studies"),
    ("stow", "POST", "/pacs/%73tudies"),
    ("modify", "POST", f"/studies/{STUDY}//modify/"),
    ("modify", "POST", f"/STUDIES/{STUDY}/MODIFY"),
    ("modify", "POST", f"/studies/{STUDY}/%6dodify"),
    ("anonymize", "POST", f"/tools/find/../../studies/{STUDY}/anonymize"),
    ("delete", "DELETE", f"/studies/{STUDY}/"),
    ("delete", "DELETE", f"//Studies/{STUDY}"),
    ("delete", "DELETE", f"/studies/{STUDY}/%2e"),
    ("delete", "DELETE", f"/app/../studies/{STUDY}"),
    ("reset", "POST", "/tools/reset/"),
    ("reset", "POST", "/TOOLS/RESET"),
    ("reset", "POST", "/tools/find/../reset"),
    ("reset", "POST", "/tools/%72eset"),
    ("reset", "POST", "/tools/find/..%2freset"),
    ("execute script", "POST", "/tools/execute-script/"),
    ("execute script", "POST", "/TOOLS/Execute-Script"),
    ("execute script", "POST", "/tools/%65xecute-script"),
    ("execute script", "POST", "//tools//execute-script//"),
    ("execute script", "POST", "/tools/find/../execute-script"),
    ("execute script", "POST", "/tools/execute-script/..%2ffind"),
    ("execute script", "POST", "/tools/execute-script%2F..%2Ffind"),
    ("execute script", "GET", "/tools/execute-script"),
    ("add modality", "PUT", "/modalities/pacs/"),
    ("add modality", "PUT", "/MODALITIES/pacs"),
    ("list modalities", "GET", "//modalities"),
]
ROUTE = {name: (method, path, least) for name, method, path, least in ROUTES}


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def policy(config_dir: Path, redis_server: Any, tmp_path_factory: pytest.TempPathFactory):
    """One policy app, database and set of users for the module (bcrypt is slow on purpose)."""
    state_dir = tmp_path_factory.mktemp("policy-state")
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
    policy = Policy(create_app(config), config)
    yield policy
    policy.app.close()
    policy.database.engine.dispose()


class Policy:
    """The app plus helpers to make users and tokens in every state."""

    def __init__(self, app: Any, config: dict[str, Any]) -> None:
        self.app = app
        self.config = config
        self.settings = load_settings(config)
        self.codec = TokenCodec.from_settings(self.settings, can_sign=True)
        self.client = Client(app)
        # The policy service reads users without SQLAlchemy; the test writes them with it,
        # as the token service and zhiva-admin do.
        self.database = Database(self.settings.database_url)
        self.users: dict[str, Any] = {}
        with self.database.session() as session:
            for role in ROLES + ("victim",):
                self.users[role] = identity(
                    save_user(
                        session,
                        name=role.title(),
                        username=role,
                        password=PASSWORD,
                        can_edit=role in ("editor", "admin", "victim"),
                        is_admin=role == "admin",
                    )
                )

    @property
    def revocations(self) -> RevocationStore:
        """The writer's side, as the token service holds it."""
        return RevocationStore(
            redis_client(self.settings.redis_url), self.config["REDIS_KEY_PREFIX"]
        )

    def mirrored(self, jti: str) -> None:
        """Wait until the service's mirror holds a revocation (milliseconds, at most its lag)."""
        mirror = self.app.revocations
        wait_until(lambda: mirror.is_revoked(jti), MAX_LAG_SECONDS, "revocation mirrored", 0.005)

    @property
    def engine(self) -> Any:
        return self.app.engine

    def token(self, role: str, state: str = "valid", *, audience: str | None = None) -> str:
        ident = self.users[role]
        kind = {
            "refresh": TokenKind.REFRESH,
            "used auth": TokenKind.AUTH,
            "auth": TokenKind.AUTH,
        }.get(state, TokenKind.ACCESS)
        now = int(time.time()) - 48 * 3600 if state == "expired" else None
        token, claims = self.codec.issue(kind, ident, audience=audience, now=now)
        if state == "forged":
            other = RSAKey.generate_key(2048)
            header = {"alg": "RS256", "typ": "JWT", "kid": self.codec.kid}
            token = jwt.encode(header, claims, other, algorithms=["RS256"])
        elif state == "hmac":
            # The classic confusion attack: HS256 keyed with the public key's PEM.
            header = {"alg": "HS256", "typ": "JWT", "kid": self.codec.kid}
            signing_input = f"{_b64(header)}.{_b64(claims)}"
            secret = self.codec.public_key.as_pem(private=False)
            signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
            token = signing_input + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
        elif state == "revoked":
            self.revocations.revoke(claims["jti"], claims["exp"])
            self.mirrored(claims["jti"])
        elif state == "used auth":
            assert self.revocations.redeem_once(claims["jti"], claims["exp"])
            self.mirrored(claims["jti"])
        return token

    def webhook(self, method: str, path: str, token: str | None, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"method": method.lower(), "level": "system", "uri": path, **extra}
        if token is not None:
            body.update({"token-key": "token", "token-value": token})
        response = self.client.post("/webhook", json=body)
        assert response.status_code == 200
        return response.get_json()

    def nginx(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        how: str = "header",
        origin: str | None = None,
    ) -> Any:
        uri = "/zhiva" + path
        headers = {"X-Original-Method": method, "X-Real-IP": "192.0.2.7"}
        if token is not None and how == "header":
            headers["token"] = token
        elif token is not None and how == "bearer":
            headers["Authorization"] = f"Bearer {token}"
        elif token is not None and how == "query":
            uri += ("&" if "?" in uri else "?") + f"token={token}"
        if origin:
            headers["Origin"] = origin
        headers["X-Original-URI"] = uri
        return self.client.get("/authorize", headers=headers)

    def grants(self, method: str, path: str, token: str | None) -> tuple[bool, bool]:
        """(webhook granted, nginx granted) for one request."""
        hook = self.webhook(method, path, token)["granted"]
        nginx = self.nginx(method, path, token).status_code in (200, 204)
        return hook, nginx


# --- the permission table --------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("name", "method", "path", "least"), ROUTES, ids=[r[0] for r in ROUTES])
def test_roles_against_routes(policy, role, name, method, path, least):
    token = policy.token(role)
    may = Role[role.upper()] >= least
    assert policy.grants(method, path, token) == (may, may)


@pytest.mark.parametrize(("name", "method", "path", "least"), ROUTES, ids=[r[0] for r in ROUTES])
def test_an_auth_token_opens_the_pacs_until_redeemed(policy, name, method, path, least):
    token = policy.token("admin", "auth")
    may = least <= Role.ADMIN
    assert policy.grants(method, path, token) == (may, may)


@pytest.mark.parametrize(("route", "method", "path"), SPELLINGS)
def test_no_spelling_of_a_write_route_is_weaker(policy, route, method, path):
    least = ROUTE[route][2]
    assert required_role(method, path) >= least
    for role in ROLES:
        if Role[role.upper()] < least:
            assert policy.grants(method, path, policy.token(role)) == (False, False)


@pytest.mark.parametrize(
    ("raw", "normal"),
    [("//studies//", "/studies"), ("/a/./b/../c", "/a/c"), ("/A%2Fb", "/a/b"), ("/", "/")],
)
def test_normalise_path(raw, normal):
    assert "/" + "/".join(readings(raw)[0]) == normal


# --- the shared-read class nginx keys grants on ----------------------------------------------

# What a viewer asks for while it opens a study: all of it in the class.
VIEWER_READS = [
    "/pacs/studies",
    "/pacs/studies/1.2.840.113619.2.55/series",
    "/pacs/studies/1.2.3/series/4.5/instances/6.7/frames/1",
    "/pacs/studies/1.2.3/series/4.5/instances/6.7/rendered",
    "/pacs/studies/1.2.3/metadata",
    "/dicom-web/studies/1.2.3/series/4.5/metadata",
    f"/instances/{STUDY}/file",
    f"/studies/{STUDY}/archive",
    f"/series/{STUDY}/instances/",
    "/patients",
]
# Near misses: each must keep its own cache key (its URI), decided on its own.
NOT_SHARED = [
    "/",
    "/system",
    "/modalities",
    "/peers/x",
    "/app/explorer.html",
    "/tools/find",
    "/pacs/studies/../../modalities",
    "/pacs/studies/./x",
    "/pacs/studies/%2e%2e/modalities",
    "/pacs//studies",
    "/pacs/studies//",
    "/Pacs/studies",
    "/pacs/studies/A",
    "/instances/x/execute-script",
    "/instances/execute-script/x",
    "/pacs/studies\\x",
    "/pacs/studies/x;y",
    "/pacs/studies/x?token=y",
    "/pacs" + "/a" * 12,
    "/pacs/" + "a" * 129,
]


@pytest.mark.parametrize("method", SHARED_READ_METHODS)
@pytest.mark.parametrize("path", VIEWER_READS)
def test_a_viewers_reads_share_one_grant(method, path):
    assert is_shared_read(method, path)
    assert required_role(method, path) is Role.VIEWER


@pytest.mark.parametrize("path", NOT_SHARED)
def test_near_misses_are_not_in_the_shared_read_class(path):
    assert not is_shared_read("GET", path)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "get", "OPTIONS"])
@pytest.mark.parametrize("path", VIEWER_READS[:3])
def test_only_get_and_head_share_a_grant(method, path):
    assert not is_shared_read(method, path)


def test_every_path_in_the_shared_read_class_needs_exactly_a_viewer():
    """The class nginx reuses one grant for: random paths built from the pieces that matter.

    A path in the class that needed more than VIEWER would let a viewer's cached grant
    open it; one that needed less (static files) would cost a decision, not safety.
    """
    rng = random.Random(6)
    pieces = [
        "pacs", "dicom-web", "studies", "series", "instances", "patients", "modalities",
        "peers", "tools", "app", "execute-script", "execute-scripts", "frames", "1.2.3",
        ".", "..", "...", ".x", "x.", "", "%2e", "%2f", "A", "a-b_c", "explorer.js", "plugins",
        "system", "0",
    ]  # fmt: skip
    shared = 0
    for _ in range(20_000):
        segments = rng.choices(pieces, k=rng.randint(0, 14))
        path = "/" + "/".join(segments) + rng.choice(["", "/"])
        for method in SHARED_READ_METHODS:
            if is_shared_read(method, path):
                shared += 1
                assert required_role(method, path) is Role.VIEWER, path
    assert shared > 1000  # the check above ran on many members, not on none


# --- token states ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("expired", 401),
        ("forged", 403),
        ("hmac", 403),
        ("revoked", 403),
        ("used auth", 403),
        ("refresh", 403),
    ],
)
@pytest.mark.parametrize("role", ROLES)
def test_bad_tokens_open_nothing(policy, role, state, status):
    token = policy.token(role, state)
    for _name, method, path, _least in ROUTES:
        assert policy.webhook(method, path, token) == {"granted": False, "validity": 0}
        assert policy.nginx(method, path, token).status_code == status


@pytest.mark.parametrize("token", [None, "", "garbage", "a.b.c", "x" * 9000])
def test_missing_or_malformed_token(policy, token):
    expected = 401 if not token else 403
    for _name, method, path, _least in ROUTES:
        assert policy.webhook(method, path, token)["granted"] is False
        assert policy.nginx(method, path, token).status_code == expected


def test_the_verification_cache_keeps_little_of_each_token(policy, monkeypatch):
    # What the engine keeps of 500 viewers' tokens and 500 forged ones as long as the codec
    # takes (8 KB), sent with a 4 KB Origin: a SHA-256 of token and Origin and what a
    # decision reads, not the token, the Origin and the claims (5.5 KB per token on
    # average here before, without the Origins; about 0.6 KB now).
    engine = policy.engine
    # Kept as bytes: each request's token is a new string, as it is when a request brings it,
    # so what the cache holds of it is counted below.
    valid = [policy.token("viewer").encode() for _ in range(500)]
    forged = [f"{number:04d}".encode() + b"x" * (MAX_TOKEN_LENGTH - 4) for number in range(500)]
    assert 2 * len(valid) <= TOKEN_CACHE_ENTRIES  # all of them stay in the cache
    engine.clear_caches()

    long_origin = b"https://" + b"o" * 4096 + b".example"

    def decide_all() -> list[bool]:
        asked = [(raw, None) for raw in valid] + [(raw, long_origin) for raw in forged]
        return [
            engine.decide(
                AccessRequest(
                    token=raw.decode(),
                    method="GET",
                    path="/system",
                    origin=origin.decode() if origin else None,
                )
            ).granted
            for raw, origin in asked
        ]

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        first = decide_all()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert first == [True] * len(valid) + [False] * len(forged)
    per_token = kept / (len(valid) + len(forged))
    assert per_token < 1024, f"{per_token:.0f} bytes kept per token"
    # ... and the second time they are the cache's answers: the codec is not asked again.
    monkeypatch.setattr(engine, "codec", None)
    assert decide_all() == first


def test_alg_none_refused(policy):
    b64 = _b64
    _, claims = policy.codec.issue(TokenKind.ACCESS, policy.users["admin"])
    token = b64({"alg": "none", "typ": "JWT"}) + "." + b64(claims) + "."
    assert policy.grants("GET", "/system", token) == (False, False)


def test_static_explorer_files_need_no_token(policy):
    for path in ("/app/explorer.html", "/app/libs/jquery.min.js", "/plugins/explorer.js"):
        assert policy.grants("GET", path, None) == (True, True)
    # ... but only as plain reads of those files.
    assert policy.grants("POST", "/app/explorer.html", None) == (False, False)
    assert policy.grants("GET", "/app/../instances", None) == (False, False)


# --- token transport and origin binding --------------------------------------------------------


@pytest.mark.parametrize("how", ["header", "bearer", "query"])
def test_token_transports_at_nginx(policy, how):
    token = policy.token("viewer")
    assert policy.nginx("GET", "/pacs/studies?limit=5", token, how=how).status_code == 204


def test_query_token_only_for_get(policy):
    token = policy.token("editor")
    assert policy.nginx("POST", "/instances", token, how="query").status_code == 401
    assert policy.nginx("POST", "/instances", token, how="header").status_code == 204


def test_webhook_accepts_bearer_token_value(policy):
    token = policy.token("viewer")
    body = {
        "method": "get",
        "level": "system",
        "uri": "/system",
        "token-key": "Authorization",
        "token-value": f"Bearer {token}",
    }
    assert policy.client.post("/webhook", json=body).get_json()["granted"] is True


def test_origin_binding(policy):
    token = policy.token("viewer", audience=ORIGIN)
    assert policy.nginx("GET", "/system", token, origin=ORIGIN).status_code == 204
    assert policy.nginx("GET", "/system", token).status_code == 204  # no browser, no Origin
    assert policy.nginx("GET", "/system", token, origin="https://evil.zhiva.ai").status_code == 403
    assert policy.nginx("GET", "/system", token, origin="null").status_code == 403
    assert policy.webhook("GET", "/system", token, origin=ORIGIN)["granted"] is True
    evil = policy.webhook("GET", "/system", token, origin="https://evil.example")
    assert evil["granted"] is False


def test_only_pacs_paths_at_nginx(policy):
    token = policy.token("admin")
    headers = {"X-Original-Method": "GET", "X-Original-URI": "/auth/token", "token": token}
    assert policy.client.get("/authorize", headers=headers).status_code == 403
    headers["X-Original-URI"] = "/zhivax/system"
    assert policy.client.get("/authorize", headers=headers).status_code == 403


# --- the webhook (docs/PROTOCOLS.md) -------------------------------------------------


def test_webhook_validity_never_past_expiry(policy):
    token = policy.token("viewer")
    answer = policy.webhook("GET", "/system", token)
    assert answer == {"granted": True, "validity": answer["validity"], "role": "viewer"}
    assert 0 < answer["validity"] <= MAX_VALIDITY_SECONDS
    lifetime = policy.codec.lifetimes[TokenKind.ACCESS]
    short, _ = policy.codec.issue(
        TokenKind.ACCESS, policy.users["viewer"], now=int(time.time()) - lifetime + 1
    )
    assert policy.webhook("GET", "/system", short)["validity"] <= 1
    almost, _ = policy.codec.issue(
        TokenKind.ACCESS, policy.users["viewer"], now=int(time.time()) - lifetime
    )
    # Expired but within the codec's leeway: granted, and nothing may be cached.
    assert policy.webhook("GET", "/system", almost) == {"granted": True, "validity": 0}
    response = policy.nginx("GET", "/system", token)
    assert response.headers["Cache-Control"] == f"private, max-age={MAX_VALIDITY_SECONDS}"
    assert response.headers["X-Accel-Expires"] == str(MAX_VALIDITY_SECONDS)
    denied = policy.nginx("POST", "/instances", token)
    assert denied.status_code == 403 and denied.headers["X-Accel-Expires"] == "0"
    assert policy.nginx("GET", "/system", short).headers["X-Accel-Expires"] in ("0", "1")


@pytest.mark.parametrize(
    ("role", "expected"),
    [("viewer", "viewer"), ("editor", "editor"), ("admin", "admin"), ("demoted", "viewer")],
)
def test_webhook_names_the_effective_role(policy, role, expected):
    if role == "demoted":
        with policy.database.session() as session:
            policy.users["demoted2"] = identity(
                save_user(session, name="D", username="demoted2", password=PASSWORD, can_edit=False)
            )
        # A token that still says editor: the database's smaller role wins.
        ident = policy.users["demoted2"]
        token = policy.codec.issue(
            TokenKind.ACCESS, dataclasses.replace(ident, can_edit=True, is_admin=False)
        )[0]
    else:
        token = policy.token(role)
    assert policy.webhook("GET", "/system", token)["role"] == expected


@pytest.mark.parametrize(
    ("level", "method", "role", "granted"),
    [
        ("study", "get", "viewer", True),
        ("study", "delete", "viewer", False),
        ("study", "delete", "editor", True),
        ("series", "post", "viewer", False),
        ("series", "post", "editor", True),
        ("instance", "put", "editor", False),
        ("instance", "put", "admin", True),
        ("patient", "get", "viewer", True),
    ],
)
def test_webhook_official_plugin_resource_calls(policy, level, method, role, granted):
    """The official plugin sends level and ids without `uri` (docs/PROTOCOLS.md)."""
    body = {
        "method": method,
        "level": level,
        "orthanc-id": STUDY,
        "dicom-uid": "1.2.3",
        "token-key": "token",
        "token-value": policy.token(role),
        "server-id": "x",
    }
    assert policy.client.post("/webhook", json=body).get_json()["granted"] is granted


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "x",
        {},
        {"method": "get"},
        {"method": "patch", "level": "system", "uri": "/"},
        {"method": "get", "level": "galaxy", "uri": "/system"},
        {"method": "get", "level": "system"},
        {"method": "get", "level": "study"},
        {"method": "get", "level": "study", "orthanc-id": "../tools/reset"},
        {"method": "GET", "level": "system", "uri": "/system"},
        {"method": "get", "level": "system", "uri": 5},
        {"method": "get", "level": "system", "uri": "system"},
    ],
)
def test_webhook_malformed_input(policy, body):
    token = policy.token("admin")
    if isinstance(body, dict):
        body = {**body, "token-key": "token", "token-value": token}
    data = json.dumps(body) if body is not None else "not json"
    response = policy.client.post("/webhook", data=data, content_type="application/json")
    assert response.status_code == 200
    assert response.get_json() == {"granted": False, "validity": 0}


# --- revocation, disabling, demotion bite within 5 seconds ------------------------------------


def _denied_within(policy, token: str, seconds: float, path: str = "/system") -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if policy.grants("GET", path, token) == (False, False):
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"still granted after {seconds}s")


def test_revoked_token_loses_access_within_5_seconds(policy):
    token = policy.token("victim")
    assert policy.grants("GET", "/system", token) == (True, True)
    claims = policy.codec.verify(token, TokenKind.ACCESS)
    policy.revocations.revoke(claims["jti"], claims["exp"])
    # The caller's cache (validity) comes on top of the service's own.
    assert _denied_within(policy, token, 5 - MAX_VALIDITY_SECONDS) < 5


def test_redeemed_auth_token_loses_access(policy):
    token = policy.token("victim", "auth")
    assert policy.grants("GET", "/system", token) == (True, True)
    claims = policy.codec.verify(token, TokenKind.AUTH)
    assert policy.revocations.redeem_once(claims["jti"], claims["exp"])
    _denied_within(policy, token, 5 - MAX_VALIDITY_SECONDS)


def test_disabled_user_and_new_generation_lose_access(policy):
    with policy.database.session() as session:
        save_user(session, name="Tmp", username="tmp", password=PASSWORD, can_edit=True)
        policy.users["tmp"] = identity(set_disabled(session, "tmp", False))
    token = policy.token("tmp")
    assert policy.grants("GET", "/system", token) == (True, True)
    with policy.database.session() as session:
        set_disabled(session, "tmp", True)
    _denied_within(policy, token, 5 - MAX_VALIDITY_SECONDS)
    with policy.database.session() as session:
        set_disabled(session, "tmp", False)
    time.sleep(2.1)
    assert policy.grants("GET", "/system", token) == (True, True)
    with policy.database.session() as session:
        revoke_all_tokens(session, "tmp")
    _denied_within(policy, token, 5 - MAX_VALIDITY_SECONDS)


def test_demoted_editor_loses_write_at_once_from_the_database(policy):
    with policy.database.session() as session:
        policy.users["demoted"] = identity(
            save_user(session, name="Demoted", username="demoted", password=PASSWORD, can_edit=True)
        )
    token = policy.token("demoted")
    assert policy.grants("POST", "/instances", token) == (True, True)
    with policy.database.session() as session:
        save_user(session, name="Demoted", username="demoted", password=PASSWORD, can_edit=False)
    start = time.monotonic()
    while policy.grants("POST", "/instances", token) != (False, False):
        assert time.monotonic() - start < 5 - MAX_VALIDITY_SECONDS
        time.sleep(0.1)
    assert policy.grants("GET", "/system", token) == (True, True)


# --- health and other paths ---------------------------------------------------------------------


def test_healthz_reports_redis_and_database(policy, monkeypatch):
    response = policy.client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {
        "service": "policy",
        "status": "ok",
        "checks": {"redis": True, "database": True},
    }
    monkeypatch.setattr(policy.app, "users", UserTable("sqlite:////nonexistent/dir/zhiva.db"))
    response = policy.client.get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["checks"] == {"redis": True, "database": False}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 404),
        ("GET", "/webhook", 404),
        ("POST", "/other", 404),
        ("POST", "/healthz", 405),
    ],
)
def test_other_paths_answer_in_the_one_error_shape(policy, method, path, status):
    response = policy.client.open(path, method=method)
    assert response.status_code == status
    assert set(response.get_json()) == {"message"}


# --- fail closed --------------------------------------------------------------------------------


def test_redis_down_denies(policy, monkeypatch):
    from services.stores.revocation import RevocationStore, redis_client

    token = policy.token("admin")
    policy.engine.clear_caches()
    dead = RevocationStore(redis_client("redis://:x@127.0.0.1:1/0"), "x:")
    monkeypatch.setattr(policy.engine, "revocations", dead)
    assert policy.grants("GET", "/system", token) == (False, False)


def test_database_error_denies_and_is_logged(policy, monkeypatch, caplog):
    token = policy.token("admin")
    policy.engine.clear_caches()
    monkeypatch.setattr(policy.engine, "users", UserTable("sqlite:////nonexistent/dir/zhiva.db"))
    with caplog.at_level("ERROR", logger="zhiva.policy"):
        assert policy.grants("GET", "/system", token) == (False, False)
    assert "policy decision failed" in caplog.text


# --- audit log ---------------------------------------------------------------------------------


def test_audit_log_one_line_per_decision_without_the_token(policy):
    log_file = policy.settings.state_dir / "logs" / "audit.log"
    before = log_file.read_text().count("\n")
    token = policy.token("viewer")
    policy.nginx("GET", f"/instances/{STUDY}/file", token, how="query")
    policy.webhook("DELETE", f"/studies/{STUDY}", token, ip="10.1.2.3")
    text = log_file.read_text()
    lines = text.splitlines()[before:]
    assert len(lines) == 2
    grant, deny = (json.loads(line) for line in lines)
    claims = policy.codec.verify(token, TokenKind.ACCESS)
    assert grant["decision"] == "grant" and grant["user"] == "viewer"
    assert grant["jti"] == claims["jti"] and grant["client"] == "192.0.2.7"
    assert grant["method"] == "GET" and grant["path"] == f"/instances/{STUDY}/file"
    assert deny["decision"] == "deny" and deny["reason"].startswith("needs editor")
    assert deny["client"] == "10.1.2.3" and deny["via"] == "webhook"
    for field in (
        "time",
        "user",
        "jti",
        "client",
        "method",
        "path",
        "level",
        "resource",
        "decision",
        "reason",
    ):
        assert field in grant
    assert token not in text and token.split(".")[2] not in text


def test_endpoint_failure_is_a_deny(policy, monkeypatch, caplog):
    """Even an error outside the decision function (parsing, audit) answers "no"."""
    endpoints = policy.app.wsgi_app

    def broken(_access: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(endpoints, "decide", broken)
    token = policy.token("admin")
    with caplog.at_level("ERROR", logger="zhiva.policy"):
        assert policy.webhook("GET", "/system", token) == {"granted": False, "validity": 0}
        assert policy.nginx("GET", "/system", token).status_code == 403
    assert "failed: denying" in caplog.text and token not in caplog.text


@pytest.mark.parametrize("verb", ["POST", "HEAD", "PUT"])
def test_authorize_judges_the_original_method_whatever_the_subrequest_uses(policy, verb):
    headers = {
        "X-Original-Method": "POST",
        "X-Original-URI": "/zhiva/instances",
        "token": policy.token("viewer"),
    }
    assert policy.client.open("/authorize", method=verb, headers=headers).status_code == 403
    headers["token"] = policy.token("editor")
    assert policy.client.open("/authorize", method=verb, headers=headers).status_code == 204
