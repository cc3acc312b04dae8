"""The token service's JSON API against real Redis and a real database.

Every row of the contract for /auth/generate-token, /auth/generate-access-token
and /auth/refresh-token, success and each error string; token claims, headers
and JWKS; origin binding and CORS; brute-force throttling; Redis down/restarted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import bcrypt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from services.domain.auth_tokens import auth_token_claims
from services.domain.passwords import STRONG_PASSWORD_RULE, hash_password
from services.domain.tokens import TokenCodec, TokenKind
from services.stores.accounts import find_user, identity, revoke_all_tokens
from services.stores.models import User
from services.token_service import create_app
from services.web.app import Resources
from tests.conftest import ADMIN_PASSWORD
from tests.support.apps import closing, signs_in
from tests.support.tokens import bearer, header_token, policy_grants, redeemed, refreshes

USER_PASSWORD = "User-Passw0rd!"
ALLOWED = "https://viewer.zhiva.ai"
OTHER_ALLOWED = "https://other.zhiva.ai"


# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="session")
def user_password_hash() -> str:
    # One bcrypt hash for every seeded user keeps the suite fast.
    return hash_password(USER_PASSWORD)


@pytest.fixture
def app(app_config):
    with closing(create_app(app_config)) as app:
        yield app


@pytest.fixture
def client(app):
    return app.test_client()


def zhiva(app) -> Resources:
    return app.extensions["zhiva"]


class Users:
    """Seeds users straight into the database (one shared hash) and issues tokens for them."""

    def __init__(self, app, password_hash: str) -> None:
        self.app = app
        self.password_hash = password_hash

    def add(
        self,
        username: str = "ann",
        *,
        can_edit: bool = False,
        is_admin: bool = False,
        disabled: bool = False,
    ) -> None:
        with zhiva(self.app).db.session() as session:
            session.add(
                User(
                    name=f"{username.title()} Example",
                    username=username,
                    password_hash=self.password_hash,
                    can_edit=can_edit,
                    is_admin=is_admin,
                    disabled=disabled,
                    token_generation=0,
                )
            )

    def token(
        self,
        kind: TokenKind = TokenKind.AUTH,
        username: str = "ann",
        *,
        audience: str | None = None,
        now: int | None = None,
    ) -> str:
        res = zhiva(self.app)
        with res.db.session() as session:
            who = identity(find_user(session, username))
        extra = auth_token_claims(res.settings) if kind is TokenKind.AUTH else None
        token, _ = res.codec.issue(kind, who, audience=audience, extra=extra, now=now)
        return token


@pytest.fixture
def users(app, user_password_hash) -> Users:
    return Users(app, user_password_hash)


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def header_of(token: str) -> dict[str, Any]:
    part = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def generate_body(**changes: Any) -> dict[str, Any]:
    body = {
        "name": "Ann Example",
        "username": "ann",
        "password": ADMIN_PASSWORD,
        "canEditResource": True,
        "userPassword": USER_PASSWORD,
        "createUserIfNotExists": True,
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


# ------------------------------------------------------ POST /auth/generate-token


def test_generate_token_creates_user_and_answers_auth_token(app, client):
    response = client.post(
        "/auth/generate-token", json=generate_body(), headers={"Host": "evil.example.com"}
    )
    assert response.status_code == 200
    token = response.get_json()["token"]
    claims = zhiva(app).codec.verify(token, TokenKind.AUTH)
    base = zhiva(app).settings.public_base_url
    # Built from the configured public URL, not from the Host header the client chose.
    assert claims["tokenServer"] == f"{base}/auth/generate-access-token"
    assert claims["refreshServer"] == f"{base}/auth/refresh-token"
    assert claims["pacs"] == f"{base}/zhiva/pacs"
    assert "evil" not in json.dumps(claims)
    assert claims["username"] == "ann" and claims["name"] == "Ann Example"
    assert claims["canEditResource"] is True and "aud" not in claims
    assert response.headers["Cache-Control"] == "no-store"
    with zhiva(app).db.session() as session:
        user = signs_in(session, "ann", USER_PASSWORD)
        assert user is not None and user.can_edit and not user.is_admin


def test_generate_token_overwrites_existing_user_keeping_admin_flag(app, client, users):
    users.add("ann", can_edit=True, is_admin=True)
    new_password = "Another-Passw0rd#"
    response = client.post(
        "/auth/generate-token",
        json=generate_body(name="Ann Renamed", canEditResource=False, userPassword=new_password),
    )
    assert response.status_code == 200
    claims = claims_of(response.get_json()["token"])
    assert claims["canEditResource"] is False and claims["isAdmin"] is True
    with zhiva(app).db.session() as session:
        assert signs_in(session, "ann", USER_PASSWORD) is None
        user = signs_in(session, "ann", new_password)
        assert user.name == "Ann Renamed" and user.is_admin and not user.can_edit


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (generate_body(name=...), "Name not valid"),
        (generate_body(name=""), "Name not valid"),
        (generate_body(name="   "), "Name not valid"),
        (generate_body(name=42), "Name not valid"),
        (generate_body(name="x" * 121), "Name not valid"),
        (generate_body(username=...), "username not valid"),
        (generate_body(username=""), "username not valid"),
        (generate_body(username="two words"), "username not valid"),
        (generate_body(username="\u0430dmin"), "username not valid"),  # Cyrillic a
        (generate_body(username=["ann"]), "username not valid"),
        (generate_body(password=...), "Invalid data"),
        (generate_body(password=""), "Invalid data"),
        (generate_body(password=123), "Invalid data"),
        (generate_body(canEditResource="maybe"), "Invalid data"),
        (generate_body(createUserIfNotExists={"a": 1}), "Invalid data"),
        (generate_body(userPassword=12345678), "Invalid data"),
        (["not", "an", "object"], "Invalid data"),
    ],
)
def test_generate_token_refuses_bad_input(app, client, body, message):
    response = client.post("/auth/generate-token", json=body)
    assert (response.status_code, response.get_json()) == (400, {"message": message})
    with zhiva(app).db.session() as session:
        assert session.query(User).count() == 0


def test_generate_token_refuses_a_body_that_is_not_json(client):
    response = client.post(
        "/auth/generate-token",
        data="name=a&username=b",
        content_type="application/x-www-form-urlencoded",
    )
    assert (response.status_code, response.get_json()) == (400, {"message": "Invalid data"})


def test_wrong_admin_password_is_refused_before_the_user_is_looked_up(app, client, users):
    users.add("ann")
    for body in (
        generate_body(password="Wrong-Passw0rd!"),
        generate_body(username="nobody", password="Wrong-Passw0rd!", createUserIfNotExists=...),
    ):
        response = client.post("/auth/generate-token", json=body)
        assert (response.status_code, response.get_json()) == (
            400,
            {"message": "Invalid admin password"},
        )
    with zhiva(app).db.session() as session:
        assert signs_in(session, "ann", USER_PASSWORD) is not None  # untouched


@pytest.mark.parametrize(
    ("exists", "message"), [(True, "User already exists"), (False, "User doesn't exists")]
)
def test_generate_token_without_create_flag(app, client, users, exists, message):
    if exists:
        users.add("ann")
    for flag in (..., False):
        response = client.post(
            "/auth/generate-token", json=generate_body(createUserIfNotExists=flag)
        )
        assert (response.status_code, response.get_json()) == (400, {"message": message})
    with zhiva(app).db.session() as session:
        assert (find_user(session, "ann") is not None) is exists


@pytest.mark.parametrize("user_password", [..., "", "weakpassword", "NoDigits!!"])
def test_generate_token_needs_a_strong_user_password(app, client, user_password):
    response = client.post("/auth/generate-token", json=generate_body(userPassword=user_password))
    assert (response.status_code, response.get_json()) == (400, {"message": STRONG_PASSWORD_RULE})
    with zhiva(app).db.session() as session:
        assert find_user(session, "ann") is None


def test_generate_token_refuses_a_disabled_user(client, users):
    users.add("ann", disabled=True)
    response = client.post("/auth/generate-token", json=generate_body())
    assert (response.status_code, response.get_json()) == (400, {"message": "User is disabled"})


def test_generate_token_origin_check_and_cors(client):
    response = client.post(
        "/auth/generate-token", json=generate_body(), headers={"Origin": "https://evil.example.com"}
    )
    assert (response.status_code, response.get_json()) == (403, {"message": "Origin not allowed"})
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = client.options(
        "/auth/generate-token",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type",
        },
    )
    assert preflight.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    response = client.post(
        "/auth/generate-token", json=generate_body(), headers={"Origin": ALLOWED}
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert response.headers["Access-Control-Allow-Credentials"] == "true"


def test_old_system_admin_hash_cost_10_works(app_config):
    old_password = "Old-Admin-Passw0rd!"
    old_hash = bcrypt.hashpw(old_password.encode(), bcrypt.gensalt(10)).decode()
    assert old_hash.startswith("$2b$10$")
    with closing(create_app({**app_config, "ADMIN_PASSWORD_HASH": old_hash})) as app:
        client = app.test_client()
        body = generate_body(password=old_password, createUserIfNotExists=...)
        response = client.post("/auth/generate-token", json=body)
        # Past the admin check: the next refusal is about the user.
        assert response.get_json() == {"message": "User doesn't exists"}
        response = client.post("/auth/generate-token", json={**body, "password": ADMIN_PASSWORD})
    assert response.get_json() == {"message": "Invalid admin password"}


# ------------------------------------------- overwriting a user revokes what it held


@pytest.mark.parametrize(
    "change",
    [
        {"userPassword": "Another-Passw0rd#"},
        {"canEditResource": False},
        {"name": "Ann Renamed"},
    ],
    ids=["password", "rights", "name only"],
)
def test_overwriting_a_user_revokes_its_tokens_and_answers_one_that_works(
    app_config, app, client, users, change
):
    users.add("ann", can_edit=True)
    access, refresh = redeemed(client, users.token())
    unredeemed = users.token()
    assert refreshes(client, refresh) and policy_grants(app_config, access)

    response = client.post("/auth/generate-token", json=generate_body(**change))
    assert response.status_code == 200
    fresh = response.get_json()["token"]

    assert not refreshes(client, refresh)
    assert not policy_grants(app_config, access)
    refused = client.post("/auth/generate-access-token", headers=bearer(unredeemed))
    assert (refused.status_code, refused.get_json()) == (403, {"message": "Invalid Token"})
    # The token the overwrite answered is of the new generation: it redeems and opens the PACS.
    with zhiva(app).db.session() as session:
        assert claims_of(fresh)["gen"] == find_user(session, "ann").token_generation == 1
    new_access, new_refresh = redeemed(client, fresh)
    assert refreshes(client, new_refresh) and policy_grants(app_config, new_access)


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"username": "bob"}, 200),
        ({"password": "Wrong-Passw0rd!"}, 400),
        ({"userPassword": "weakpassword"}, 400),
        ({"createUserIfNotExists": ...}, 400),
    ],
    ids=["another user created", "wrong admin password", "weak user password", "no create flag"],
)
def test_creating_another_user_or_a_refused_overwrite_leaves_tokens_working(
    app_config, app, client, users, change, status
):
    """The control twin of the test above: only an overwrite that happens revokes."""
    users.add("ann", can_edit=True)
    access, refresh = redeemed(client, users.token())
    unredeemed = users.token()

    response = client.post("/auth/generate-token", json=generate_body(**change))
    assert response.status_code == status

    assert refreshes(client, refresh)
    assert policy_grants(app_config, access)
    assert client.post("/auth/generate-access-token", headers=bearer(unredeemed)).status_code == 200
    with zhiva(app).db.session() as session:
        assert find_user(session, "ann").token_generation == 0


# ------------------------------------------------------------------ brute force


def test_wrong_admin_passwords_are_slowed_then_refused_with_429(app_config, app, client):
    wrong = generate_body(password="Wrong-Passw0rd!", createUserIfNotExists=...)
    durations = []
    for _ in range(5):
        started = time.monotonic()
        response = client.post("/auth/generate-token", json=wrong)
        durations.append(time.monotonic() - started)
        assert response.get_json() == {"message": "Invalid admin password"}
    # Failure n waits 0.25 * n seconds on top of the bcrypt check.
    assert durations[3] >= 1.0 and durations[4] >= 1.25
    for body in (wrong, generate_body()):  # even the right password, while blocked
        response = client.post("/auth/generate-token", json=body)
        assert response.status_code == 429
        assert 0 < int(response.headers["Retry-After"]) <= 900
        assert "try again later" in response.get_json()["message"]
    # Redis holds the count: a new worker (a fresh app) sees the same block.
    with closing(create_app(app_config)) as fresh:
        refused = fresh.test_client().post("/auth/generate-token", json=generate_body())
        assert refused.status_code == 429
    # Another client address (nginx's X-Forwarded-For, one trusted hop) is not blocked.
    other = client.post(
        "/auth/generate-token", json=generate_body(), headers={"X-Forwarded-For": "192.0.2.7"}
    )
    assert other.status_code == 200


# --------------------------------------------------- POST /auth/generate-access-token


def test_redeem_returns_access_in_header_and_refresh_as_body(app, client, users):
    users.add("ann", can_edit=True)
    auth = users.token()
    response = client.post("/auth/generate-access-token", headers=bearer(auth))
    assert response.status_code == 200
    access, refresh = header_token(response), response.get_data(as_text=True)
    codec = zhiva(app).codec
    access_claims = codec.verify(access, TokenKind.ACCESS)
    refresh_claims = codec.verify(refresh, TokenKind.REFRESH)
    for claims in (access_claims, refresh_claims):
        assert claims["username"] == "ann" and claims["canEditResource"] is True
        assert "aud" not in claims  # no Origin, unbound auth token: a script's tokens
        assert "tokenServer" not in claims
    assert response.headers["Cache-Control"] == "no-store"
    # Exactly once.
    again = client.post("/auth/generate-access-token", headers=bearer(auth))
    assert (again.status_code, again.get_json()) == (403, {"message": "Invalid Token"})
    assert "Authorization" not in again.headers


def test_redeem_binds_to_the_request_origin_with_cors(app, client, users):
    users.add("ann")
    response = client.post(
        "/auth/generate-access-token", headers={**bearer(users.token()), "Origin": ALLOWED}
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Authorization" in response.headers["Access-Control-Expose-Headers"]
    assert claims_of(header_token(response))["aud"] == ALLOWED
    assert claims_of(response.get_data(as_text=True))["aud"] == ALLOWED
    preflight = client.options(
        "/auth/generate-access-token",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization",
        },
    )
    assert preflight.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]


def test_redeem_a_bound_auth_token_from_its_origin(client, users):
    users.add("ann")
    auth = users.token(audience=ALLOWED)
    response = client.post(
        "/auth/generate-access-token", headers={**bearer(auth), "Origin": ALLOWED}
    )
    assert response.status_code == 200
    assert claims_of(header_token(response))["aud"] == ALLOWED


def _forged_tokens(users: Users) -> dict[str, str]:
    good = users.token()
    head, payload, signature = good.split(".")
    claims = claims_of(good)
    other_key = RSAKey.import_key(
        rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    res = zhiva(users.app)
    pem = res.settings.jwt_public_key.read_bytes()
    b64 = lambda obj: base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()  # noqa: E731
    raised = b64({**claims, "canEditResource": True, "isAdmin": True})
    return {
        "other key": jwt.encode({"alg": "RS256", "kid": res.codec.kid}, claims, other_key),
        "tampered": f"{head}.{raised}.{signature}",
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "hmac with public key": _hmac_signed(
            f"{b64({'alg': 'HS256', 'typ': 'JWT', 'kid': res.codec.kid})}.{payload}", pem
        ),
        "wrong issuer": TokenCodec(
            res.codec.public_key, res.codec.private_key, "someone.else", res.codec.lifetimes
        ).issue(TokenKind.AUTH, identity_of_ann(users))[0],
        "garbage": "not-a-token",
    }


def _hmac_signed(signing_input: str, secret: bytes) -> str:
    # Made by hand: joserfc itself refuses a public key as an HMAC secret.
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def identity_of_ann(users: Users):
    with zhiva(users.app).db.session() as session:
        return identity(find_user(session, "ann"))


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("no header", 401, "Missing Token"),
        ("empty bearer", 401, "Missing Token"),
        ("expired", 401, "Token Expired"),
        ("used", 403, "Invalid Token"),
        ("revoked jti", 403, "Invalid Token"),
        ("revoked generation", 403, "Invalid Token"),
        ("user deleted", 403, "Invalid Token"),
        ("user disabled", 403, "Invalid Token"),
        ("wrong origin", 403, "Invalid Token"),
        ("origin not allowed", 403, "Invalid Token"),
        ("access token", 403, "Invalid Token"),
        ("refresh token", 403, "Invalid Token"),
        ("other key", 403, "Invalid Token"),
        ("tampered", 403, "Invalid Token"),
        ("alg none", 403, "Invalid Token"),
        ("hmac with public key", 403, "Invalid Token"),
        ("wrong issuer", 403, "Invalid Token"),
        ("garbage", 403, "Invalid Token"),
        ("basic auth", 403, "Invalid Token"),
    ],
)
def test_redeem_refusals(app, client, users, case, status, message):
    users.add("ann")
    res = zhiva(app)
    headers: dict[str, str] = {}
    token = users.token(audience=ALLOWED if case == "wrong origin" else None)
    if case == "empty bearer":
        headers = {"Authorization": "Bearer "}
    elif case == "expired":
        lifetime = res.settings.auth_token_lifetime
        headers = bearer(users.token(now=int(time.time()) - lifetime - 60))
    elif case == "used":
        assert client.post("/auth/generate-access-token", headers=bearer(token)).status_code == 200
        headers = bearer(token)
    elif case == "revoked jti":
        claims = claims_of(token)
        res.revocations.revoke(claims["jti"], claims["exp"])
        headers = bearer(token)
    elif case == "revoked generation":
        with res.db.session() as session:
            revoke_all_tokens(session, "ann")
        headers = bearer(token)
    elif case == "user deleted":
        with res.db.session() as session:
            session.delete(find_user(session, "ann"))
        headers = bearer(token)
    elif case == "user disabled":
        with res.db.session() as session:
            find_user(session, "ann").disabled = True
        headers = bearer(token)
    elif case == "wrong origin":
        headers = {**bearer(token), "Origin": OTHER_ALLOWED}
    elif case == "origin not allowed":
        headers = {**bearer(token), "Origin": "https://evil.example.com"}
    elif case in ("access token", "refresh token"):
        headers = bearer(users.token(TokenKind(case.split()[0])))
    elif case == "basic auth":
        headers = {"Authorization": "Basic YWRtaW46YWRtaW4="}
    elif case != "no header":
        headers = bearer(_forged_tokens(users)[case])
    response = client.post("/auth/generate-access-token", headers=headers)
    assert (response.status_code, response.get_json()) == (status, {"message": message})
    assert "Authorization" not in response.headers


def test_refused_origin_does_not_burn_the_auth_token(client, users):
    users.add("ann")
    auth = users.token(audience=ALLOWED)
    for origin in (OTHER_ALLOWED, "https://evil.example.com"):
        response = client.post(
            "/auth/generate-access-token", headers={**bearer(auth), "Origin": origin}
        )
        assert response.status_code == 403
        assert "Access-Control-Allow-Origin" not in response.headers or origin == OTHER_ALLOWED
    # Without an Origin (a script) a bound token is judged without it (README, SECURITY.md).
    assert client.post("/auth/generate-access-token", headers=bearer(auth)).status_code == 200


# ------------------------------------------------------------ POST /auth/refresh-token


def test_refresh_answers_a_new_access_token_with_the_same_binding(app, client, users):
    users.add("ann", can_edit=True)
    redeemed = client.post(
        "/auth/generate-access-token", headers={**bearer(users.token()), "Origin": ALLOWED}
    )
    refresh = redeemed.get_data(as_text=True)
    response = client.post("/auth/refresh-token", headers={**bearer(refresh), "Origin": ALLOWED})
    assert response.status_code == 200
    access = header_token(response)
    claims = zhiva(app).codec.verify(access, TokenKind.ACCESS, origin=ALLOWED)
    assert claims["aud"] == ALLOWED and claims["canEditResource"] is True
    assert claims["jti"] != claims_of(header_token(redeemed))["jti"]
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "Authorization" in response.headers["Access-Control-Expose-Headers"]
    # A refresh token works more than once (until it expires or is revoked).
    assert client.post("/auth/refresh-token", headers=bearer(refresh)).status_code == 200


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("no header", 401, "Missing Token"),
        ("expired", 401, "Token Expired"),
        ("auth token", 403, "Invalid Token"),
        ("access token", 403, "Invalid Token"),
        ("wrong origin", 403, "Invalid Token"),
        ("revoked jti", 403, "Invalid Token"),
        ("revoked generation", 403, "Invalid Token"),
        ("user disabled", 403, "Invalid Token"),
    ],
)
def test_refresh_refusals(app, client, users, case, status, message):
    users.add("ann")
    res = zhiva(app)
    refresh = users.token(TokenKind.REFRESH, audience=ALLOWED)
    headers = bearer(refresh)
    if case == "no header":
        headers = {}
    elif case == "expired":
        lifetime = res.settings.refresh_token_lifetime
        headers = bearer(users.token(TokenKind.REFRESH, now=int(time.time()) - lifetime - 60))
    elif case in ("auth token", "access token"):
        headers = bearer(users.token(TokenKind(case.split()[0])))
    elif case == "wrong origin":
        headers = {**headers, "Origin": OTHER_ALLOWED}
    elif case == "revoked jti":
        claims = claims_of(refresh)
        res.revocations.revoke(claims["jti"], claims["exp"])
    elif case == "revoked generation":
        with res.db.session() as session:
            revoke_all_tokens(session, "ann")
    elif case == "user disabled":
        with res.db.session() as session:
            find_user(session, "ann").disabled = True
    response = client.post("/auth/refresh-token", headers=headers)
    assert (response.status_code, response.get_json()) == (status, {"message": message})
    assert "Authorization" not in response.headers


# ------------------------------------------------------------- claims, headers, JWKS


def test_claims_and_header_of_each_kind_and_jwks_verifies_them(app, client, users):
    users.add("ann", can_edit=True)
    settings = zhiva(app).settings
    auth = users.token()
    redeemed = client.post(
        "/auth/generate-access-token", headers={**bearer(auth), "Origin": ALLOWED}
    )
    tokens = {
        TokenKind.AUTH: auth,
        TokenKind.ACCESS: header_token(redeemed),
        TokenKind.REFRESH: redeemed.get_data(as_text=True),
    }
    lifetimes = {
        TokenKind.AUTH: settings.auth_token_lifetime,
        TokenKind.ACCESS: settings.access_token_lifetime,
        TokenKind.REFRESH: settings.refresh_token_lifetime,
    }
    jwks = client.get("/auth/.well-known/jwks.json")
    assert jwks.status_code == 200
    key_set = KeySet.import_key_set(jwks.get_json())
    (published,) = jwks.get_json()["keys"]
    assert published["kty"] == "RSA" and published["alg"] == "RS256" and "d" not in published
    for kind, token in tokens.items():
        header = header_of(token)
        assert header == {"alg": "RS256", "typ": "JWT", "kid": published["kid"]}
        decoded = jwt.decode(token, key_set, algorithms=["RS256"])
        claims = decoded.claims
        assert claims["kind"] == kind.value
        assert claims["iss"] == settings.jwt_issuer
        assert claims["exp"] - claims["iat"] == lifetimes[kind]
        assert len(claims["jti"]) >= 32
        assert claims["name"] == "Ann Example" and claims["username"] == "ann"
        assert claims["canEditResource"] is True
        assert ("tokenServer" in claims) is (kind is TokenKind.AUTH)
        assert claims.get("aud") == (None if kind is TokenKind.AUTH else ALLOWED)
    assert len({claims_of(t)["jti"] for t in tokens.values()}) == 3


# ----------------------------------------------------------------- Redis trouble


def test_redeemed_token_stays_refused_after_a_redis_restart(client, users, redis_server):
    users.add("ann")
    auth = users.token()
    assert client.post("/auth/generate-access-token", headers=bearer(auth)).status_code == 200
    redis_server.restart()
    response = client.post("/auth/generate-access-token", headers=bearer(auth))
    assert (response.status_code, response.get_json()) == (403, {"message": "Invalid Token"})
    # ... and the service goes on by itself with the restarted Redis.
    assert (
        client.post("/auth/generate-access-token", headers=bearer(users.token())).status_code == 200
    )


def test_redis_down_answers_503_and_grants_nothing_then_recovers(client, users, redis_server):
    users.add("ann")
    auth = users.token()
    refresh = users.token(TokenKind.REFRESH)
    redis_server.stop()
    try:
        for path, headers, body in (
            ("/auth/generate-access-token", bearer(auth), None),
            ("/auth/refresh-token", bearer(refresh), None),
            ("/auth/generate-token", {}, generate_body()),
        ):
            response = client.post(path, headers=headers, json=body)
            assert response.status_code == 503, path
            assert "unavailable" in response.get_json()["message"]
            assert response.headers["Retry-After"]
            assert "Authorization" not in response.headers
            assert "token" not in response.get_json()
        health = client.get("/healthz")
        assert health.status_code == 503
    finally:
        redis_server.start()
    # Nothing was granted, so the auth token still works once, now that Redis is back.
    response = client.post("/auth/generate-access-token", headers=bearer(auth))
    assert response.status_code == 200
    assert client.post("/auth/refresh-token", headers=bearer(refresh)).status_code == 200
