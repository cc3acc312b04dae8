"""Hostile forms, JSON and headers through nginx on the running stack.

Rows other suites lack (missing fields, wrong types, CSRF missing or from
another session are in test_token_api.py, test_token_page.py and
test_login_service.py): extra fields that try to grant rights, huge bodies,
SQL and HTML in every field, look-alike usernames, spoofed client-address
headers and `Host` injection.
"""

from __future__ import annotations

import base64
import json
import uuid
from html import escape
from urllib.parse import quote

import pytest
from sqlalchemy import text

from services.stores.accounts import find_user
from tests.conftest import ADMIN_PASSWORD

pytestmark = pytest.mark.stack

USER_PASSWORD = "Input-Passw0rd!"
HOSTILE = "<script>alert(1)</script>' OR '1'='1; DROP TABLE users;--\"><img src=x onerror=alert(2)>"


def generate(stack, body, **headers):  # type: ignore[no-untyped-def]
    with stack.http() as http:
        return http.post(f"{stack.base_url}/auth/generate-token", json=body, headers=headers)


def body_for(username: str, **extra: object) -> dict[str, object]:
    return {
        "name": "Input Test",
        "username": username,
        "password": ADMIN_PASSWORD,
        "userPassword": USER_PASSWORD,
        "createUserIfNotExists": True,
        **extra,
    }


def claims_of(token: str) -> dict[str, object]:
    """What a token says (reading only; every other suite checks signatures)."""
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==="))


def user_count(stack) -> int:  # type: ignore[no-untyped-def]
    with stack.database().session() as session:
        return session.scalar(text("SELECT count(*) FROM users"))


def test_extra_fields_do_not_grant_rights(stack):
    """Mass assignment: admin, generation or disabled flags in the body are ignored."""
    username = f"extra-{uuid.uuid4().hex[:8]}"
    answer = generate(
        stack,
        body_for(
            username,
            isAdmin=True,
            is_admin=True,
            admin=True,
            gen=99,
            token_generation=99,
            disabled=False,
            role="admin",
            kind="access",
            aud="https://evil.example",
        ),
    )
    assert answer.status_code == 200, answer.text
    claims = claims_of(answer.json()["token"])
    assert (claims["isAdmin"], claims["gen"], claims["kind"]) == (False, 0, "auth")
    assert "aud" not in claims
    with stack.database().session() as session:
        user = find_user(session, username)
        assert user is not None and not user.is_admin and user.token_generation == 0


@pytest.mark.parametrize("path", ["/auth/generate-token", "/auth/sign-user"])
def test_huge_json_bodies_are_refused_with_413(stack, path):
    before = user_count(stack)
    huge = {**body_for("huge-body"), "name": "x" * 1_000_000}
    with stack.http() as http:
        answer = http.post(stack.base_url + path, json=huge, timeout=30)
    assert answer.status_code == 413
    assert answer.json()["message"]
    assert user_count(stack) == before


@pytest.mark.e2e
def test_huge_form_on_the_admin_page_is_refused_with_413(stack):
    with stack.http() as http:
        answer = http.post(
            f"{stack.base_url}/auth/token", data={"name": "x" * 1_000_000}, timeout=30
        )
    assert answer.status_code == 413


@pytest.mark.parametrize("field", ["name", "username", "password", "userPassword"])
def test_sql_and_html_in_every_field_of_generate_token(stack, field):
    before = user_count(stack)
    username = f"sql-{uuid.uuid4().hex[:8]}"
    answer = generate(stack, {**body_for(username), field: HOSTILE})
    with stack.database().session() as session:
        assert session.scalar(text("PRAGMA integrity_check")) == "ok"
    if field == "name":
        # A display name may hold any printable text: stored verbatim, as data.
        assert answer.status_code == 200, answer.text
        assert claims_of(answer.json()["token"])["name"] == HOSTILE
        with stack.database().session() as session:
            assert find_user(session, username).name == HOSTILE
        assert user_count(stack) == before + 1
    else:
        assert answer.status_code == 400
        assert (
            answer.json()["message"]
            in {
                "username not valid",
                "Invalid admin password",
            }
            or "password" in answer.json()["message"].lower()
        )
        assert user_count(stack) == before
    assert answer.headers["Content-Type"].startswith("application/json")


def test_sql_in_sign_user_fields_is_only_a_failed_sign_in(stack):
    with stack.http() as http:
        for field in ("username", "password"):
            body = {"username": "nobody", "password": "x", "referer": "https://localhost:3000/"}
            answer = http.post(
                f"{stack.base_url}/auth/sign-user", json={**body, field: HOSTILE}, timeout=30
            )
            assert (answer.status_code, answer.json()) == (400, {"message": "Invalid data"})
    with stack.database().session() as session:
        assert session.scalar(text("PRAGMA integrity_check")) == "ok"


@pytest.mark.e2e
def test_html_in_sign_in_parameters_is_shown_escaped(stack):
    response_type = json.dumps({"type": "authToken", "returnParams": {"x": HOSTILE}})
    url = (
        f"{stack.base_url}/auth/sign-in?return_uri={quote('https://localhost:3000/')}"
        f"&response_type={quote(response_type)}"
    )
    with stack.http() as http:
        page = http.get(url, timeout=30)
    assert page.status_code == 200
    assert "<script>alert(1)" not in page.text and "<img src=x" not in page.text
    assert escape(HOSTILE, quote=True)[:20] in page.text or "&lt;script&gt;" in page.text


def test_look_alike_usernames_are_one_user_or_refused(stack):
    base = f"lookalike{uuid.uuid4().hex[:6]}"
    assert generate(stack, body_for(base)).status_code == 200
    before = user_count(stack)
    # Full-width and upper-case spellings fold to the same user (an overwrite, not a second one).
    full_width = "".join(chr(ord(c) + 0xFEE0) if c.isalnum() else c for c in base)
    for spelling in (base.upper(), full_width):
        answer = generate(stack, body_for(spelling))
        assert answer.status_code == 200
        assert claims_of(answer.json()["token"])["username"] == base
    assert user_count(stack) == before
    # Letters of other scripts that look Latin are refused, never a second "admin".
    for spelling in ("аdmin", "admіn", "ad\u200bmin", "admin\u0301"):
        answer = generate(stack, body_for(spelling))
        assert (answer.status_code, answer.json()["message"]) == (400, "username not valid")
    assert user_count(stack) == before


# ------------------------------------------------------------------ header tricks

SPOOFED = {"X-Forwarded-For": "203.0.113.7", "X-Real-IP": "203.0.113.8", "Forwarded": "for=6.6.6.6"}


def test_spoofed_client_address_does_not_reach_the_audit_log(stack):
    marker = f"/zhiva/pacs/studies/1.2.{uuid.uuid4().int % 10**12}"
    with stack.http() as http:
        assert http.get(stack.base_url + marker, headers=SPOOFED, timeout=30).status_code == 401
    path = marker.removeprefix("/zhiva")
    lines = [json.loads(line) for line in stack.audit_log().splitlines() if path in line]
    assert lines, "no audit line for the request"
    assert {line["client"] for line in lines} == {"127.0.0.1"}


def test_spoofed_client_address_does_not_escape_the_admin_password_throttle(stack):
    redis = stack.redis()
    key = f"{stack.settings.redis_key_prefix}throttle:admin-password:127.0.0.1"
    redis.delete(key)
    try:
        with stack.http() as http:
            statuses = []
            for attempt in range(6):
                headers = {
                    "X-Forwarded-For": f"198.51.100.{attempt}",
                    "X-Real-IP": f"198.51.100.{attempt}",
                }
                answer = http.post(
                    f"{stack.base_url}/auth/generate-token",
                    json={**body_for("throttled"), "password": "Wrong-Passw0rd!"},
                    headers=headers,
                    timeout=30,
                )
                statuses.append(answer.status_code)
        assert statuses == [400] * 5 + [429]
        assert not redis.keys(f"{stack.settings.redis_key_prefix}throttle:*198.51.100*")
    finally:
        redis.delete(key)


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "evil.example"},
        {"Host": "evil.example:8443", "X-Forwarded-Host": "evil.example"},
        {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"},
    ],
    ids=["host", "host-and-forwarded-host", "forwarded-host"],
)
@pytest.mark.e2e
def test_host_header_does_not_change_urls_in_tokens(stack, headers):
    public = stack.settings.public_base_url
    answer = generate(stack, body_for(f"host-{uuid.uuid4().hex[:8]}"), **headers)
    assert answer.status_code == 200, answer.text
    claims = claims_of(answer.json()["token"])
    assert claims["tokenServer"] == f"{public}/auth/generate-access-token"
    assert claims["refreshServer"] == f"{public}/auth/refresh-token"
    assert claims["pacs"] == f"{public}/zhiva/pacs"
