"""The OpenID Connect provider's rules (docs/OIDC.md), each with its refusals.

The login app (authorize, logout) and the token app (token, revoke, userinfo,
discovery) of one real SQLite database and one real Redis, driven as a browser
and a client drive them. tests/test_oidc_stack.py runs the same flows through
nginx, Orthanc and the policy.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from authlib.oidc.discovery import OpenIDProviderMetadata

from services.domain.tokens import TokenInvalid, TokenKind
from services.login_service import create_app as create_login
from services.stores.accounts import revoke_all_tokens
from services.token_service import create_app as create_token
from services.web.oidc import SESSION_COOKIE
from tests.support.apps import closing
from tests.support.oidc import (
    BASE_URL,
    CLIENT_ORIGIN,
    POST_LOGOUT_URI,
    REDIRECT_URI,
    Provider,
    pkce_pair,
    query_of,
)


@pytest.fixture
def provider(app_config: dict[str, Any]):
    with closing(create_login(app_config)) as login, closing(create_token(app_config)) as token:
        provider = Provider(login, token)
        provider.user()
        provider.client()
        yield provider


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def header_of(token: str) -> dict[str, Any]:
    header = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))


def family_revoked(provider: Provider, family: str) -> bool:
    return provider.token.extensions["zhiva"].revocations.is_revoked("fam:" + family)


# --- authorize: refusals that must not redirect --------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"client_id": None},
        {"client_id": ""},
        {"client_id": "nobody"},
        {"client_id": "bad id with spaces"},
        {"redirect_uri": None},
        {"redirect_uri": REDIRECT_URI + "/"},
        {"redirect_uri": REDIRECT_URI.upper()},
        {"redirect_uri": REDIRECT_URI + "?x=1"},
        {"redirect_uri": REDIRECT_URI + "#frag"},
        {"redirect_uri": REDIRECT_URI + "/more"},
        {"redirect_uri": REDIRECT_URI + '"x'},
        {"redirect_uri": REDIRECT_URI + "é"},
        {"redirect_uri": "https://evil.example/callback"},
        {"redirect_uri": "https://localhost:3001/callback"},
        {"redirect_uri": "http://localhost:3000/callback"},
    ],
    ids=lambda changes: repr(changes)[:60],
)
def test_authorize_refusal_shows_a_page_and_never_redirects(provider: Provider, changes):
    response = provider.authorize(provider.authorize_query(**changes))
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert "Cannot sign in" in response.text


@pytest.mark.parametrize("name", ["state", "client_id", "redirect_uri", "scope"])
def test_authorize_refuses_a_repeated_parameter_without_redirecting(provider: Provider, name):
    query = provider.authorize_query()
    params = [(k, v) for k, v in query.items() if not k.startswith("_")] + [(name, query[name])]
    response = provider.browser.get("/auth/oauth/authorize?" + urlencode(params), base_url=BASE_URL)
    assert response.status_code in (302, 400)
    if response.status_code == 302:
        # authlib redirects for a repeated state or scope only once the client is known.
        assert query_of(response.headers["Location"])["error"] == "invalid_request"
        assert response.headers["Location"].startswith(REDIRECT_URI + "?")


# --- authorize: refusals that go back to the client with `error` and the exact `state` -----


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": "id_token"}, "unsupported_response_type"),
        ({"response_type": "code id_token"}, "unsupported_response_type"),
        ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": "s256"}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),
        ({"code_challenge": "a" * 42}, "invalid_request"),
        ({"scope": "profile"}, "invalid_scope"),
        ({"prompt": "none"}, "login_required"),
        ({"prompt": "none login"}, "invalid_request"),
    ],
    ids=lambda value: repr(value)[:50],
)
def test_authorize_refusal_goes_back_with_error_and_state(provider: Provider, changes, error):
    state = "s t&ü=1"
    response = provider.authorize(provider.authorize_query(state=state, **changes))
    assert response.status_code == 302
    location = response.headers["Location"]
    if error == "unsupported_response_type" and "state" not in query_of(location):
        pytest.fail(f"no state in {location}")
    assert location.startswith(REDIRECT_URI + "?")
    answer = query_of(location)
    assert answer["error"] == error
    assert answer["state"] == state
    assert "code" not in answer


# --- authorize: the form and the session ----------------------------------------------------


def test_authorize_shows_the_sign_in_form_with_strict_headers(provider: Provider):
    response = provider.authorize(provider.authorize_query())
    assert response.status_code == 200
    for name in ('name="username"', 'name="password"', 'name="csrf_token"'):
        assert name in response.text
    csp = response.headers["Content-Security-Policy"]
    assert f"form-action 'self' {CLIENT_ORIGIN}" in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"


def test_sign_in_answers_a_code_the_exact_state_and_a_session_cookie(provider: Provider):
    state = 'a b&c=d/ü"'
    response = provider.sign_in(provider.authorize_query(state=state))
    assert response.status_code == 302
    answer = query_of(response.headers["Location"])
    assert answer["state"] == state
    assert len(answer["code"]) >= 40
    cookie = next(v for v in response.headers.getlist("Set-Cookie") if SESSION_COOKIE in v)
    for attribute in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/", "Max-Age="):
        assert attribute in cookie
    assert "Domain" not in cookie  # __Host- cookies carry none


@pytest.mark.parametrize(
    ("username", "password", "status"),
    [("ann", "wrong-Passw0rd!", 400), ("nobody", "Provider-Passw0rd!", 400)],
)
def test_sign_in_refusals_show_the_form_again(provider: Provider, username, password, status):
    response = provider.sign_in(provider.authorize_query(), username, password)
    assert response.status_code == status
    assert "Invalid username or password" in response.text
    assert "Location" not in response.headers
    assert SESSION_COOKIE not in response.headers.get("Set-Cookie", "")


def test_sign_in_of_a_disabled_user_is_refused(provider: Provider):
    provider.user("bob", disabled=True)
    response = provider.sign_in(provider.authorize_query(), "bob")
    assert response.status_code == 400


def test_sign_in_without_csrf_token_is_refused(provider: Provider):
    response = provider.sign_in(provider.authorize_query(), csrf=False)
    assert response.status_code == 400
    assert "Location" not in response.headers


def test_sign_in_is_throttled_like_the_zhiva_sign_in(provider: Provider):
    provider.login.extensions["zhiva_sign_in"].slowdown_max = 0.001
    for _ in range(20):
        provider.sign_in(provider.authorize_query(), "ann", "wrong-Passw0rd!", address="10.9.9.9")
    response = provider.sign_in(provider.authorize_query(), address="10.9.9.9")
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0


def test_a_reused_nonce_is_refused(provider: Provider):
    _code, query = provider.code()
    response = provider.authorize(provider.authorize_query(nonce=query["nonce"]))
    assert query_of(response.headers["Location"])["error"] == "invalid_request"


def test_a_session_answers_the_next_authorize_without_the_form(provider: Provider):
    provider.code()
    response = provider.authorize(provider.authorize_query())
    assert response.status_code == 302
    assert "code" in query_of(response.headers["Location"])
    silent = provider.authorize(provider.authorize_query(prompt="none"))
    assert "code" in query_of(silent.headers["Location"])


@pytest.mark.parametrize("changes", [{"prompt": "login"}, {"max_age": "0"}])
def test_prompt_login_and_max_age_show_the_form_despite_a_session(provider: Provider, changes):
    provider.code()
    time.sleep(1.1 if "max_age" in changes else 0)
    response = provider.authorize(provider.authorize_query(**changes))
    assert response.status_code == 200
    assert 'name="password"' in response.text


def test_a_disabled_users_session_answers_login_required(provider: Provider):
    provider.code()
    database = provider.database()
    try:
        with database.session() as session:
            from services.stores.accounts import set_disabled

            set_disabled(session, "ann")
    finally:
        database.engine.dispose()
    response = provider.authorize(provider.authorize_query(prompt="none"))
    assert query_of(response.headers["Location"])["error"] == "login_required"


def test_a_raised_generation_ends_the_session(provider: Provider):
    provider.code()
    database = provider.database()
    try:
        with database.session() as session:
            revoke_all_tokens(session, "ann")
    finally:
        database.engine.dispose()
    response = provider.authorize(provider.authorize_query(prompt="none"))
    assert query_of(response.headers["Location"])["error"] == "login_required"


# --- token endpoint: the authorization code grant -----------------------------------------


def test_code_exchange_answers_rfc9068_access_and_id_tokens(provider: Provider):
    code, query = provider.code()
    response = provider.exchange(code, query["_verifier"])
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    tokens = response.get_json()
    settings = provider.token.extensions["zhiva"].settings
    codec = provider.token.extensions["zhiva"].codec
    access = tokens["access_token"]
    assert header_of(access) == {"alg": "RS256", "typ": "at+jwt", "kid": codec.kid}
    claims = codec.verify_oidc_access(access)
    assert claims["iss"] == settings.oidc_issuer
    assert claims["aud"] == settings.oidc_resource
    assert claims["client_id"] == "app"
    assert claims["preferred_username"] == "ann"
    assert claims["canEditResource"] is False
    assert len(claims["sub"]) == 36
    id_token = claims_of(tokens["id_token"])
    assert header_of(tokens["id_token"])["kid"] == codec.kid
    assert id_token["aud"] == "app"
    assert id_token["nonce"] == query["nonce"]
    assert id_token["sub"] == claims["sub"]
    assert {"auth_time", "at_hash", "exp", "iat"} <= set(id_token)
    assert id_token["preferred_username"] == "ann"
    assert tokens["refresh_token"].startswith(claims["fam"] + ".")
    assert tokens["token_type"] == "Bearer"


def test_tokens_of_zhiva_and_oidc_kinds_are_not_interchangeable(provider: Provider):
    tokens = provider.tokens()
    codec = provider.token.extensions["zhiva"].codec
    for token in (tokens["access_token"], tokens["id_token"]):
        with pytest.raises(TokenInvalid):
            codec.verify(token, (TokenKind.ACCESS, TokenKind.AUTH, TokenKind.REFRESH))
    with pytest.raises(TokenInvalid):
        codec.verify_oidc_access(tokens["id_token"])
    for path in ("/auth/refresh-token", "/auth/generate-access-token"):
        for token in (tokens["access_token"], tokens["id_token"]):
            response = provider.machine.post(
                path, base_url=BASE_URL, headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 403


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"code_verifier": None}, "invalid_request"),
        ({"code_verifier": "x" * 43}, "invalid_grant"),
        ({"code_verifier": "short"}, "invalid_request"),
        ({"redirect_uri": REDIRECT_URI + "/"}, "invalid_grant"),
        ({"redirect_uri": None}, "invalid_grant"),
        ({"code": "not-a-code"}, "invalid_grant"),
        ({"client_id": "other"}, "invalid_grant"),
        ({"client_id": "nobody"}, "invalid_client"),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_code_exchange_refusals(provider: Provider, changes, error):
    provider.client("other")
    code, query = provider.code()
    changes = dict(changes)
    presented = changes.pop("code", code)
    response = provider.exchange(presented, query["_verifier"], **changes)
    assert response.status_code in (400, 401)
    assert response.get_json()["error"] == error
    if error == "invalid_grant" and presented == code:
        # Single use however the attempt ended: the right exchange now fails too.
        assert provider.exchange(code, query["_verifier"]).status_code == 400


def test_an_expired_code_is_refused(provider: Provider):
    code, query = provider.code()
    state = provider.token.extensions["zhiva_oidc"].deps.state
    for key in state.client.scan_iter(state.prefix + "code:*"):
        assert 0 < state.client.ttl(key) <= 60
        state.client.pexpire(key, 1)
    time.sleep(0.05)
    response = provider.exchange(code, query["_verifier"])
    assert response.get_json()["error"] == "invalid_grant"


def test_a_replayed_code_is_refused_and_revokes_what_the_first_use_got(provider: Provider):
    code, query = provider.code()
    first = provider.exchange(code, query["_verifier"]).get_json()
    family = claims_of(first["access_token"])["fam"]
    assert not family_revoked(provider, family)
    again = provider.exchange(code, query["_verifier"])
    assert again.get_json()["error"] == "invalid_grant"
    assert family_revoked(provider, family)
    assert provider.refresh(first["refresh_token"]).get_json()["error"] == "invalid_grant"


def test_two_concurrent_redemptions_of_one_code_give_one_answer(provider: Provider):
    code, query = provider.code()
    statuses: list[int] = []

    def redeem() -> None:
        client = provider.token.test_client()
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "client_id": "app",
            "code_verifier": query["_verifier"],
        }
        statuses.append(client.post("/auth/oauth/token", data=data, base_url=BASE_URL).status_code)

    threads = [threading.Thread(target=redeem) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [400] * 7


def _confidential_code(provider: Provider) -> tuple[str, str, str]:
    secret = provider.client("conf", confidential=True)
    assert secret
    code, query = provider.code(provider.authorize_query(client_id="conf"))
    return secret, code, query["_verifier"]


def test_a_confidential_client_authenticates_with_basic_or_post(provider: Provider):
    secret, code, verifier = _confidential_code(provider)
    basic = base64.b64encode(f"conf:{secret}".encode()).decode()
    response = provider.exchange(
        code, verifier, client_id=None, _headers={"Authorization": f"Basic {basic}"}
    )
    assert response.status_code == 200
    code, query = provider.code(provider.authorize_query(client_id="conf"))
    response = provider.exchange(code, query["_verifier"], client_id="conf", client_secret=secret)
    assert response.status_code == 200


@pytest.mark.parametrize("secret", [None, "wrong-secret"])
def test_a_confidential_client_without_its_secret_is_refused(provider: Provider, secret):
    _secret, code, verifier = _confidential_code(provider)
    response = provider.exchange(code, verifier, client_id="conf", client_secret=secret)
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"


def test_token_endpoint_cors_is_for_the_clients_origin_only(provider: Provider):
    code, query = provider.code()
    response = provider.exchange(code, query["_verifier"], _headers={"Origin": CLIENT_ORIGIN})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == CLIENT_ORIGIN
    code, query = provider.code()
    foreign = provider.exchange(
        code, query["_verifier"], _headers={"Origin": "https://evil.example"}
    )
    assert foreign.get_json()["error"] == "invalid_client"
    assert "Access-Control-Allow-Origin" not in foreign.headers


@pytest.mark.parametrize("grant_type", ["password", "client_credentials", "implicit", ""])
def test_other_grant_types_are_unsupported(provider: Provider, grant_type):
    response = provider.machine.post(
        "/auth/oauth/token",
        data={"grant_type": grant_type, "client_id": "app", "username": "ann", "password": "x"},
        base_url=BASE_URL,
    )
    assert response.status_code == 400
    assert response.get_json()["error"] in ("unsupported_grant_type", "invalid_request")


# --- refresh ---------------------------------------------------------------------------------


def test_refresh_rotates_and_keeps_the_family(provider: Provider):
    tokens = provider.tokens()
    response = provider.refresh(tokens["refresh_token"])
    assert response.status_code == 200
    rotated = response.get_json()
    assert rotated["refresh_token"] != tokens["refresh_token"]
    assert "id_token" not in rotated
    assert claims_of(rotated["access_token"])["fam"] == claims_of(tokens["access_token"])["fam"]
    assert provider.refresh(rotated["refresh_token"]).status_code == 200


def test_a_spent_refresh_token_used_again_revokes_its_whole_family(provider: Provider):
    tokens = provider.tokens()
    newest = provider.refresh(tokens["refresh_token"]).get_json()
    family = claims_of(tokens["access_token"])["fam"]
    replay = provider.refresh(tokens["refresh_token"])
    assert replay.get_json()["error"] == "invalid_grant"
    assert family_revoked(provider, family)
    assert provider.refresh(newest["refresh_token"]).get_json()["error"] == "invalid_grant"


def test_another_clients_refresh_token_is_refused_and_not_spent(provider: Provider):
    provider.client("other")
    tokens = provider.tokens()
    assert provider.refresh(tokens["refresh_token"], "other").get_json()["error"] == "invalid_grant"
    assert provider.refresh(tokens["refresh_token"]).status_code == 200


def test_refresh_is_refused_once_the_user_is_disabled_or_revoked(provider: Provider):
    from services.stores.accounts import set_disabled

    for username, change in (("dora", set_disabled), ("eve", revoke_all_tokens)):
        provider.user(username)
        tokens = provider.tokens(username=username)
        database = provider.database()
        try:
            with database.session() as session:
                change(session, username)
        finally:
            database.engine.dispose()
        assert provider.refresh(tokens["refresh_token"]).get_json()["error"] == "invalid_grant"


def test_refresh_cannot_widen_the_scope(provider: Provider):
    tokens = provider.tokens(query=provider.authorize_query(scope="openid"))
    response = provider.machine.post(
        "/auth/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "app",
            "scope": "openid profile",
        },
        base_url=BASE_URL,
    )
    assert response.get_json()["error"] == "invalid_scope"


# --- userinfo --------------------------------------------------------------------------------


def test_userinfo_answers_the_four_claims(provider: Provider):
    tokens = provider.tokens()
    response = provider.machine.get(
        "/auth/oauth/userinfo",
        base_url=BASE_URL,
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert response.status_code == 200
    info = response.get_json()
    assert set(info) == {"sub", "name", "preferred_username", "canEditResource"}
    assert info["preferred_username"] == "ann"
    assert info["sub"] == claims_of(tokens["id_token"])["sub"]


def _zhiva_access_token(provider: Provider) -> str:
    from services.domain.tokens import TokenKind as Kind

    codec = provider.token.extensions["zhiva"].codec
    user = provider.login.extensions["zhiva"].db.find("ann")
    return codec.issue(Kind.ACCESS, user)[0]


@pytest.mark.parametrize("case", ["none", "id", "zhiva", "revoked", "foreign-origin", "garbage"])
def test_userinfo_refusals(provider: Provider, case):
    tokens = provider.tokens()
    token = {
        "none": None,
        "id": tokens["id_token"],
        "zhiva": _zhiva_access_token(provider),
        "revoked": tokens["access_token"],
        "foreign-origin": tokens["access_token"],
        "garbage": "abc.def.ghi",
    }[case]
    if case == "revoked":
        provider.machine.post(
            "/auth/oauth/revoke",
            data={"token": token, "client_id": "app"},
            base_url=BASE_URL,
        )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if case == "foreign-origin":
        headers["Origin"] = "https://evil.example"
    response = provider.machine.get("/auth/oauth/userinfo", base_url=BASE_URL, headers=headers)
    assert response.status_code == 401
    assert "WWW-Authenticate" in response.headers


# --- revocation (RFC 7009) --------------------------------------------------------------------


def test_revoking_a_refresh_token_revokes_its_family(provider: Provider):
    tokens = provider.tokens()
    response = provider.machine.post(
        "/auth/oauth/revoke",
        data={"token": tokens["refresh_token"], "client_id": "app"},
        base_url=BASE_URL,
    )
    assert response.status_code == 200
    assert family_revoked(provider, claims_of(tokens["access_token"])["fam"])
    assert provider.refresh(tokens["refresh_token"]).get_json()["error"] == "invalid_grant"


def test_revoking_an_access_token_revokes_its_jti(provider: Provider):
    tokens = provider.tokens()
    response = provider.machine.post(
        "/auth/oauth/revoke",
        data={
            "token": tokens["access_token"],
            "token_type_hint": "access_token",
            "client_id": "app",
        },
        base_url=BASE_URL,
    )
    assert response.status_code == 200
    jti = claims_of(tokens["access_token"])["jti"]
    assert provider.token.extensions["zhiva"].revocations.is_revoked(jti)


@pytest.mark.parametrize(
    ("data", "status", "error"),
    [
        ({"token": "unknown-token"}, 200, None),
        ({}, 400, "invalid_request"),
        ({"token": "x", "token_type_hint": "id_token"}, 400, "unsupported_token_type"),
    ],
)
def test_revocation_answers(provider: Provider, data, status, error):
    response = provider.machine.post(
        "/auth/oauth/revoke", data={**data, "client_id": "app"}, base_url=BASE_URL
    )
    assert response.status_code in ((status,) if status == 200 else (400, 401))
    if error:
        assert response.get_json()["error"] == error


def test_another_clients_token_cannot_be_revoked(provider: Provider):
    provider.client("other")
    tokens = provider.tokens()
    response = provider.machine.post(
        "/auth/oauth/revoke",
        data={"token": tokens["refresh_token"], "client_id": "other"},
        base_url=BASE_URL,
    )
    assert response.get_json()["error"] == "invalid_grant"
    assert provider.refresh(tokens["refresh_token"]).status_code == 200


# --- logout (RP-initiated) --------------------------------------------------------------------


def _logout(provider: Provider, **params: str) -> Any:
    return provider.browser.get("/auth/oauth/logout?" + urlencode(params), base_url=BASE_URL)


def test_logout_with_a_hint_ends_the_session_and_revokes_its_tokens(provider: Provider):
    tokens = provider.tokens()
    family = claims_of(tokens["access_token"])["fam"]
    response = _logout(
        provider,
        id_token_hint=tokens["id_token"],
        post_logout_redirect_uri=POST_LOGOUT_URI,
        state="bye 1",
    )
    assert response.status_code == 302
    assert response.headers["Location"].startswith(POST_LOGOUT_URI + "?")
    assert query_of(response.headers["Location"])["state"] == "bye 1"
    cleared = next(v for v in response.headers.getlist("Set-Cookie") if SESSION_COOKIE in v)
    assert "Max-Age=0" in cleared
    assert family_revoked(provider, family)
    again = provider.authorize(provider.authorize_query(prompt="none"))
    assert query_of(again.headers["Location"])["error"] == "login_required"


def test_logout_to_an_unregistered_uri_does_not_redirect(provider: Provider):
    tokens = provider.tokens()
    response = _logout(
        provider, id_token_hint=tokens["id_token"], post_logout_redirect_uri="https://evil.example/"
    )
    assert response.status_code == 200
    assert "Location" not in response.headers


@pytest.mark.parametrize("hint", ["none", "access", "other-user"])
def test_logout_without_a_trusted_hint_asks_first(provider: Provider, hint):
    tokens = provider.tokens()
    params = {"post_logout_redirect_uri": POST_LOGOUT_URI}
    if hint == "access":
        params["id_token_hint"] = tokens["access_token"]
    elif hint == "other-user":
        provider.user("bob")
        other = Provider(provider.login, provider.token)  # a second browser
        other.user("bob")
        params["id_token_hint"] = other.tokens(username="bob")["id_token"]
    response = _logout(provider, **params)
    assert response.status_code == 200
    assert "Sign out?" in response.text
    assert "Location" not in response.headers
    # The GET changed nothing: the session still answers.
    still = provider.authorize(provider.authorize_query(prompt="none"))
    assert "code" in query_of(still.headers["Location"])
    # The confirmation's POST (with its CSRF token) ends it.
    csrf = __import__("re").search(
        r'name="csrf_token" type="hidden" value="([^"]+)"', response.text
    )
    url = "/auth/oauth/logout?" + urlencode(params)
    done = provider.browser.post(
        url,
        data={"csrf_token": csrf.group(1), "choice": "sign-out"},
        base_url=BASE_URL,
        headers={"Referer": BASE_URL + url},
    )
    assert done.status_code in (200, 302)
    gone = provider.authorize(provider.authorize_query(prompt="none"))
    assert query_of(gone.headers["Location"])["error"] == "login_required"


def test_logout_with_a_client_id_other_than_the_hints_audience_is_refused(provider: Provider):
    provider.client("other")
    tokens = provider.tokens()
    response = _logout(provider, id_token_hint=tokens["id_token"], client_id="other")
    assert response.status_code == 400
    assert "Location" not in response.headers


# --- discovery -------------------------------------------------------------------------------


def test_discovery_document_is_valid_and_names_our_endpoints(provider: Provider):
    response = provider.machine.get("/auth/.well-known/openid-configuration", base_url=BASE_URL)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    document = response.get_json()
    OpenIDProviderMetadata(document).validate()
    settings = provider.token.extensions["zhiva"].settings
    assert document["issuer"] == settings.oidc_issuer
    for name in ("authorization", "token", "userinfo", "revocation", "end_session"):
        assert urlsplit(document[f"{name}_endpoint"]).path.startswith("/auth/oauth/")
    assert document["code_challenge_methods_supported"] == ["S256"]
    jwks = provider.machine.get("/auth/.well-known/jwks.json", base_url=BASE_URL)
    assert jwks.headers["Access-Control-Allow-Origin"] == "*"
    kid = jwks.get_json()["keys"][0]["kid"]
    assert header_of(provider.tokens()["id_token"])["kid"] == kid
    assert claims_of(provider.tokens()["id_token"])["iss"] == document["issuer"]


def test_the_full_flow_raises_no_warning(provider: Provider):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokens = provider.tokens()
        provider.refresh(tokens["refresh_token"])
        _logout(provider, id_token_hint=tokens["id_token"])


def test_pkce_pair_helper_is_s256():
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128 and len(challenge) == 43


def test_a_removed_then_re_added_client_does_not_revive_old_tokens(provider: Provider):
    from services.stores.oauth_clients import remove_client

    tokens = provider.tokens()
    time.sleep(1.01)  # registrations are compared with tokens' `iat`, by the second
    database = provider.database()
    try:
        with database.session() as session:
            remove_client(session, "app")
    finally:
        database.engine.dispose()
    provider.client()
    assert provider.refresh(tokens["refresh_token"]).get_json()["error"] == "invalid_grant"
    info = provider.machine.get(
        "/auth/oauth/userinfo",
        base_url=BASE_URL,
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert info.status_code == 401
    assert provider.refresh(provider.tokens()["refresh_token"]).status_code == 200
