"""Forged and odd tokens at every endpoint that takes one, on the running stack.

Rows the other suites do not have (they cover alg none, HMAC with the public
key, tampering, expiry, wrong issuer/kind/origin, revoked, used, disabled and
deleted users: tests/test_token_api.py, test_policy_decision.py,
test_policy_stack.py). Each forgery is signed with the stack's real private
key unless the row says otherwise, so only the one odd thing makes it wrong;
the `control` row, built the same way without it, must be accepted.

Endpoints: the token service (redeem, refresh) through nginx; the policy
service's `/authorize` and `/webhook` on its loopback port; Orthanc through
nginx.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from services.domain.tokens import TokenCodec
from services.stores.accounts import identity

pytestmark = pytest.mark.stack

PASSWORD = "Forged-Passw0rd!"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Forger:
    def __init__(self, stack: Any) -> None:
        self.stack = stack
        settings = stack.settings
        self.codec = TokenCodec.from_settings(settings, can_sign=True)
        self.key = serialization.load_pem_private_key(
            settings.jwt_private_key.read_bytes(), password=None
        )
        user = stack.create_user(f"forged-{uuid.uuid4().hex[:8]}", PASSWORD, can_edit=True)
        self.who = identity(user)

    def sign(self, header: dict[str, Any], claims: dict[str, Any]) -> str:
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64(signature)}"

    def token(self, kind: str, case: str) -> str:
        """A `kind` token for the stack's user, spoilt as `case` says."""
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "kid": self.codec.kid}
        claims: dict[str, Any] = {
            "iss": self.codec.issuer,
            "iat": now,
            "exp": now + 3600,
            "jti": uuid.uuid4().hex,
            "kind": kind,
            "name": self.who.name,
            "username": self.who.username,
            "canEditResource": self.who.can_edit,
            "isAdmin": self.who.is_admin,
            "gen": self.who.token_generation,
        }
        if case == "jku":
            header["jku"] = "https://evil.example/jwks.json"
        elif case == "x5u":
            header["x5u"] = "https://evil.example/cert.pem"
        elif case == "jwk embedded":
            header["jwk"] = self.codec.jwks()["keys"][0]
        elif case == "unknown kid":
            header["kid"] = "another-key"
        elif case == "no kid":
            del header["kid"]
        elif case == "nbf future":
            claims["nbf"] = now + 3600
        elif case == "iat future":
            claims["iat"] = now + 3600
            claims["exp"] = now + 7200
        elif case == "100 KB":
            claims["pad"] = "a" * 100_000
        elif case == "control chars":
            claims["name"] = "x"
            return self.sign(header, claims)[:-4] + "\x01\x7f\t\x00"
        elif case == "non-utf-8":
            return self.sign(header, claims)[:-2] + "\xff\xfe"
        elif case != "control":
            raise ValueError(case)
        return self.sign(header, claims)


CASES = [
    "jku",
    "x5u",
    "jwk embedded",
    "unknown kid",
    "no kid",
    "nbf future",
    "iat future",
    "100 KB",
    "control chars",
    "non-utf-8",
]


@pytest.fixture(scope="module")
def forger(stack):
    return Forger(stack)


def send(http: requests.Session, method: str, url: str, headers: dict[str, Any]) -> int:
    """The status, sending header values as raw bytes (latin-1) when they are not ASCII."""
    raw = {k: v.encode("latin-1") if isinstance(v, str) else v for k, v in headers.items()}
    try:
        return http.request(method, url, headers=raw, timeout=30).status_code
    except requests.exceptions.ConnectionError:
        return 0  # the server closed the connection on a malformed request: refused too


# What "refused" means at each door: a 4xx that opens nothing (nginx and gunicorn refuse
# over-long or malformed headers before any code of ours runs, some by closing the
# connection: 0), never a 2xx or a 5xx.
REFUSED = {0, 400, 401, 403, 414, 431}


@pytest.mark.parametrize("case", ["control", *CASES])
@pytest.mark.parametrize(
    ("kind", "path"),
    [("auth", "/auth/generate-access-token"), ("refresh", "/auth/refresh-token")],
    ids=["redeem", "refresh"],
)
@pytest.mark.e2e
def test_token_service(stack, forger, case, kind, path):
    token = forger.token(kind, case)
    with stack.http() as http:
        status = send(http, "POST", stack.base_url + path, {"Authorization": f"Bearer {token}"})
    if case == "control":
        assert status == 200
    else:
        assert status in REFUSED, status


@pytest.mark.parametrize("case", ["control", *CASES])
@pytest.mark.parametrize("how", ["token", "bearer", "query"])
@pytest.mark.e2e
def test_pacs_through_nginx(stack, forger, case, how):
    token = forger.token("access", case)
    url = f"{stack.base_url}/zhiva/pacs/studies"
    headers: dict[str, str] = {}
    if how == "token":
        headers["token"] = token
    elif how == "bearer":
        headers["Authorization"] = f"Bearer {token}"
    else:
        url += "?token=" + requests.utils.quote(token, safe="")
    with stack.http() as http:
        status = send(http, "GET", url, headers)
    if case == "control":
        assert status == 200
    else:
        assert status in REFUSED, status


@pytest.mark.parametrize("case", ["control", *CASES])
def test_policy_authorize_directly(stack, forger, case):
    """The policy service's own port (loopback), as nginx's auth_request calls it."""
    token = forger.token("access", case)
    url = f"http://127.0.0.1:{stack.env['POLICY_SERVICE_PORT']}/authorize"
    headers = {"X-Original-Method": "GET", "X-Original-URI": "/zhiva/pacs/studies", "token": token}
    with requests.Session() as http:
        http.trust_env = False
        status = send(http, "GET", url, headers)
    if case == "control":
        assert status == 204
    else:
        assert status in REFUSED, status


@pytest.mark.parametrize("case", ["control", *CASES])
def test_policy_webhook(stack, forger, case):
    """The webhook always answers `200 {"granted": …}`; a forgery is never granted."""
    token = forger.token("access", case)
    url = f"http://127.0.0.1:{stack.env['POLICY_SERVICE_PORT']}/webhook"
    body = {
        "method": "get",
        "level": "system",
        "uri": "/pacs/studies",
        "token-key": "token",
        "token-value": token,
    }
    with requests.Session() as http:
        http.trust_env = False
        # json.dumps escapes the odd characters; send them raw as well, as bytes.
        for data in (json.dumps(body).encode(), json.dumps(body, ensure_ascii=False).encode()):
            r = http.post(url, data=data, headers={"Content-Type": "application/json"}, timeout=30)
            assert r.status_code == 200
            assert r.json()["granted"] is (case == "control"), r.text
