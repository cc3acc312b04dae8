"""The login service through Flask's test client: real Redis, real SQLite, real bcrypt.

What each group proves is said in its docstring; the browser flow against the
whole stack lives in tests/test_login_browser.py.
"""

from __future__ import annotations

import json
import re
import socket
import time
from urllib.parse import parse_qsl, urlsplit

import pytest

from services.domain.auth_tokens import auth_token_claims
from services.domain.tokens import TokenKind
from services.login_service import create_app
from services.settings import SettingsError, load_settings
from services.web.app import DATABASE_DOWN, resources
from tests.support.apps import closing
from tests.support.login import BASE_URL, PASSWORD, VIEWER, SignInActions, resources_of

FAILED = "Invalid username or password"


@pytest.fixture
def app(app_config):
    with closing(create_app(app_config)) as app:
        yield app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def auth(app, client):
    return SignInActions(app, client)


def verify_auth_token(app, token, origin=None):
    return resources_of(app).codec.verify(token, TokenKind.AUTH, origin=origin)


# --- the page ---------------------------------------------------------------------------


def test_sign_in_page_keeps_return_uri_and_response_type(auth):
    """The form keeps return_uri and response_type for the round trip; CSRF; nothing from a CDN."""
    response_type = json.dumps({"type": "authToken", "returnParams": {"server": "a b"}})
    response = auth.page(VIEWER + "/viewer?x=1", response_type)
    assert response.status_code == 200
    page = response.text
    assert 'name="return_uri" type="hidden" value="https://localhost:3000/viewer?x=1"' in page
    assert "&#34;returnParams&#34;" in page  # the JSON, escaped into the hidden field
    assert 'name="csrf_token"' in page
    # Everything the page loads is ours: no script at all, the stylesheet from our static path.
    assert "<script" not in page
    assert re.findall(r'(?:href|src)="([^"]+)"', page) == [
        "/auth/static/login/login.css",
        "/auth/token",
    ]
    csp = response.headers["Content-Security-Policy"]
    assert "form-action 'self' https://localhost:3000" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["Cache-Control"] == "no-store"


def test_stylesheet_is_served_locally(client):
    response = client.get("/auth/static/login/login.css", base_url=BASE_URL)
    assert response.status_code == 200 and "text/css" in response.content_type
    assert "http" not in response.text  # no imports from elsewhere
    response.close()


# --- return_uri: no open redirect ------------------------------------------------------------

REJECTED_RETURN_URIS = [
    pytest.param(None, id="missing"),
    pytest.param("", id="empty"),
    pytest.param("//evil.com/", id="scheme-relative"),
    pytest.param("/\\evil.com/", id="slash-backslash"),
    pytest.param("/auth/token", id="relative-path"),
    pytest.param("https://evil.com/", id="foreign"),
    pytest.param("https://evil@localhost:3000/", id="userinfo-before-allowed"),
    pytest.param("https://localhost:3000@evil.com/", id="allowed-as-userinfo"),
    pytest.param("https://localhost:3000%40evil.com/", id="percent-at"),
    pytest.param("https://app.zhiva.ai.evil.com/", id="allowed-as-subdomain-prefix"),
    pytest.param("https://localhost.evil.com/", id="localhost-prefix"),
    pytest.param("https://evilzhiva.ai/", id="suffix-without-dot"),
    pytest.param("https://zhiva.ai/", id="wildcard-needs-a-label"),
    pytest.param("https://evil.com/https://localhost:3000/", id="allowed-in-path"),
    pytest.param("https://evil.com/?r=https://localhost:3000/", id="allowed-in-query"),
    pytest.param("https://evil.com#https://localhost:3000", id="allowed-in-fragment"),
    pytest.param("http://localhost:3000/", id="plain-http"),
    pytest.param("javascript:alert(1)", id="javascript"),
    pytest.param("JavaScript://localhost:3000/%0aalert(1)", id="javascript-with-authority"),
    pytest.param("data:text/html,<script>alert(1)</script>", id="data"),
    pytest.param("ftp://localhost/", id="ftp"),
    pytest.param("https:\\\\evil.com/", id="backslashes"),
    pytest.param("https:/\\evil.com/", id="slash-backslash-authority"),
    pytest.param("https://localhost:3000\\@evil.com/", id="backslash-at"),
    pytest.param("https:evil.com", id="no-authority"),
    pytest.param("https:///evil.com", id="empty-authority"),
    pytest.param(" https://localhost:3000/", id="leading-space"),
    pytest.param("https://localhost:3000/ ", id="trailing-space"),
    pytest.param("https://local\thost:3000/", id="tab-in-host"),
    pytest.param("https://localhost:3000/\nx", id="newline"),
    pytest.param("https://localhost:3000/\x00", id="nul"),
    pytest.param("\x01https://localhost:3000/", id="leading-control"),
    pytest.param("https://localhost:3000/\u2028", id="unicode-line-separator"),
    pytest.param("https://evil\u3002com/", id="ideographic-dot"),
    pytest.param("https://[::1]:3000/", id="ipv6-literal"),
    pytest.param("https://localhost:99999/", id="bad-port"),
    pytest.param("https://localhost:3000x/", id="junk-port"),
    pytest.param("https://localhost:3000/" + "a" * 2100, id="over-long"),
]


@pytest.mark.parametrize("return_uri", REJECTED_RETURN_URIS)
def test_rejected_return_uri_gets_error_page_on_get(auth, return_uri):
    query = {} if return_uri is None else {"return_uri": return_uri}
    response = auth.client.get("/auth/sign-in", query_string=query, base_url=BASE_URL)
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert response.content_type.startswith("text/html")
    assert "Cannot sign in" in response.text and 'name="password"' not in response.text
    assert "<script" not in response.text


@pytest.mark.parametrize("return_uri", REJECTED_RETURN_URIS)
def test_rejected_return_uri_gets_no_redirect_on_post(auth, return_uri):
    """A valid CSRF token still gets no redirect (and no token) to a bad address."""
    response = auth.submit("nobody", PASSWORD, return_uri=return_uri or "")
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert "Cannot sign in" in response.text


@pytest.mark.parametrize("return_uri", REJECTED_RETURN_URIS)
def test_rejected_referer_on_sign_user(auth, return_uri):
    body = {"username": "nobody", "password": PASSWORD}
    if return_uri is not None:
        body["referer"] = return_uri
    response = auth.sign_user(body)
    assert response.status_code == 400
    assert response.json == {"message": "Invalid data"}


def test_foreign_origin_error_names_the_origin_to_allow(auth):
    response = auth.page("https://viewer.example.org/app")
    assert response.status_code == 400
    assert "https://viewer.example.org is not an allowed origin" in response.text
    assert "ALLOWED_ORIGINS" in response.text


@pytest.mark.parametrize(
    "return_uri, audience",
    [
        ("https://localhost:3000/", "https://localhost:3000"),
        ("HTTPS://LocalHost:3000/viewer", "https://localhost:3000"),
        ("https://localhost/", "https://localhost"),
        ("https://localhost:443/", "https://localhost"),
        ("https://app.zhiva.ai/settings", "https://app.zhiva.ai"),
        ("https://a.b.zhiva.ai/", "https://a.b.zhiva.ai"),
    ],
)
def test_allowed_return_uris(auth, return_uri, audience):
    assert auth.page(return_uri).status_code == 200
    response = auth.sign_user({"username": "x", "password": "y", "referer": return_uri})
    assert response.status_code == 400  # no such user; the address itself passed
    assert response.json == {"message": "Invalid data"}


def test_configured_origin_with_wildcard(app_config):
    with closing(
        create_app({**app_config, "ALLOWED_ORIGINS": "https://*.mydomain.com,https://direct.app"})
    ) as app:
        client = app.test_client()

        def status(return_uri):
            query = {"return_uri": return_uri}
            return client.get("/auth/sign-in", query_string=query, base_url=BASE_URL).status_code

        for ok in ("https://zhiva.mydomain.com/", "https://direct.app/x"):
            assert status(ok) == 200
        for bad in (
            "https://mydomain.com/",
            "https://direct.app.evil.com/",
            "https://direct.app:8443/",
        ):
            assert status(bad) == 400


@pytest.mark.parametrize(
    "response_type",
    [
        "not json",
        "[]",
        '{"type":"code"}',
        '{"returnParams":{}}',
        '{"type":"authToken","returnParams":[1]}',
        '{"type":"authToken","returnParams":"x"}',
    ],
)
def test_bad_response_type_is_refused(auth, response_type):
    response = auth.page(VIEWER + "/", response_type)
    assert response.status_code == 400
    assert "response_type" in response.text and "Location" not in response.headers


# --- the redirect ---------------------------------------------------------------------------


def test_success_redirects_with_token_and_state(app, auth):
    """302 to return_uri?token=…&state=…: own query and fragment kept, planted token dropped."""
    auth.user("ann", can_edit=True)
    return_uri = VIEWER + "/viewer/settings?server=a%20b&token=planted&state=planted&x=1#servers"
    params = {"serverName": "my pacs", "nested": {"a": [1, 2]}, "ünï": "çødé"}
    response_type = json.dumps({"type": "authToken", "returnParams": params})
    response = auth.submit("Ann", PASSWORD, return_uri=return_uri, response_type=response_type)

    assert response.status_code == 302, response.text
    assert response.headers["Cache-Control"] == "no-store"
    location = response.headers["Location"]
    parts = urlsplit(location)
    assert (parts.scheme, parts.netloc, parts.path, parts.fragment) == (
        "https",
        "localhost:3000",
        "/viewer/settings",
        "servers",
    )
    # Everything is percent-encoded: no raw JSON or spaces in the URL.
    assert not set(parts.query) & set(" {}\"'<>")
    query = parse_qsl(parts.query, keep_blank_values=True)
    assert [name for name, _ in query] == ["server", "x", "token", "state"]
    values = dict(query)
    assert values["server"] == "a b" and values["x"] == "1"
    assert json.loads(values["state"]) == {"context": "zhiva_auth", "state": "", "params": params}

    claims = verify_auth_token(app, values["token"], origin=VIEWER)
    settings = resources_of(app).settings
    assert claims["kind"] == "auth" and claims["aud"] == VIEWER
    assert claims["username"] == "ann" and claims["name"] == "Ann Smith"
    assert claims["canEditResource"] is True
    assert claims["tokenServer"] == settings.public_base_url + "/auth/generate-access-token"
    assert claims["refreshServer"] == settings.public_base_url + "/auth/refresh-token"
    assert claims["pacs"] == settings.public_base_url + "/zhiva/pacs"
    assert claims["exp"] - claims["iat"] == settings.auth_token_lifetime


def test_success_without_response_type_gives_empty_params(app, auth):
    auth.user("ann")
    response = auth.submit("ann", PASSWORD, return_uri="https://app.zhiva.ai/")
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith("https://app.zhiva.ai/?token=")
    values = dict(parse_qsl(urlsplit(location).query))
    assert json.loads(values["state"]) == {"context": "zhiva_auth", "state": "", "params": {}}
    assert verify_auth_token(app, values["token"])["aud"] == "https://app.zhiva.ai"


def test_sign_user_json_path(app, auth):
    """POST /auth/sign-user: a token bound to the referer's origin; CORS for allowed origins."""
    auth.user("ann")
    response = auth.sign_user(
        {"username": "ann", "password": PASSWORD, "referer": "https://app.zhiva.ai/viewer?x=1"},
        origin="https://app.zhiva.ai",
        address="10.0.0.2",
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.zhiva.ai"
    assert response.headers["Cache-Control"] == "no-store"
    claims = verify_auth_token(app, response.json["token"], origin="https://app.zhiva.ai")
    assert claims["aud"] == "https://app.zhiva.ai" and claims["tokenServer"].endswith(
        "/auth/generate-access-token"
    )

    foreign = auth.client.options(
        "/auth/sign-user",
        base_url=BASE_URL,
        headers={"Origin": "https://evil.com", "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in foreign.headers


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "x",
        {},
        {"username": "ann"},
        {"username": "ann", "password": PASSWORD},
        {"username": 1, "password": PASSWORD, "referer": VIEWER},
        {"username": "ann", "password": ["x"], "referer": VIEWER},
        {"username": "ann", "password": "Wrong-Passw0rd!", "referer": VIEWER},
        {"username": "nobody", "password": PASSWORD, "referer": VIEWER},
    ],
)
def test_sign_user_refusals_all_say_invalid_data(auth, body):
    auth.user("ann")
    response = auth.sign_user(body)
    assert response.status_code == 400
    assert response.json == {"message": "Invalid data"}


def test_sign_user_needs_json_content_type(auth):
    """A cross-site HTML form cannot send application/json, so it cannot reach the JSON path."""
    auth.user("ann")
    response = auth.client.post(
        "/auth/sign-user",
        base_url=BASE_URL,
        data=json.dumps({"username": "ann", "password": PASSWORD, "referer": VIEWER}),
        content_type="text/plain",
    )
    assert response.status_code == 400 and response.json == {"message": "Invalid data"}


# --- failed sign-ins --------------------------------------------------------------------------


def test_every_failure_gets_one_message(auth):
    """Unknown user, wrong password, disabled user, odd username: the same page, no redirect."""
    auth.user("ann")
    auth.user("bob", disabled=True)
    pages = []
    for index, (username, password) in enumerate(
        [
            ("nobody", PASSWORD),
            ("ann", "Wrong-Passw0rd!"),
            ("bob", PASSWORD),
            ("аnn", PASSWORD),
            ("ann ann", PASSWORD),
        ]
    ):
        response = auth.submit(username, password, address=f"10.0.1.{index}")
        assert response.status_code == 400
        assert "Location" not in response.headers
        message = re.search(r'id="message">([^<]*)<', response.text).group(1)
        pages.append(message)
        assert password not in response.text  # the password is never written back
    assert set(pages) == {FAILED}


def test_unknown_user_costs_as_much_as_a_wrong_password(auth):
    """bcrypt runs for unknown usernames too (roughly equal time, fresh counters each time)."""
    auth.user("ann")

    def elapsed(username, address):
        start = time.perf_counter()
        assert auth.submit(username, "Wrong-Passw0rd!", address=address).status_code == 400
        return time.perf_counter() - start

    wrong_password = min(elapsed("ann", "10.0.2.1"), elapsed("ann2", "10.0.2.2"))
    unknown = min(elapsed("nobody1", "10.0.2.3"), elapsed("nobody2", "10.0.2.4"))
    # Without the dummy check an unknown user would answer in well under a tenth of the time.
    assert unknown > 0.5 * wrong_password


def test_disabled_user_refused_on_json_path_too(auth):
    auth.user("bob", disabled=True)
    response = auth.sign_user({"username": "bob", "password": PASSWORD, "referer": VIEWER})
    assert response.status_code == 400 and response.json == {"message": "Invalid data"}


def test_empty_fields_are_asked_for_and_not_counted(app, auth):
    response = auth.submit("", "")
    assert response.status_code == 400
    assert "Enter your username and password." in response.text
    with app.app_context():
        keys = resources().redis.keys(resources().settings.redis_key_prefix + "throttle:*")
    assert keys == []


# --- CSRF -----------------------------------------------------------------------------------


def test_post_without_csrf_token_is_refused(auth):
    auth.user("ann")
    response = auth.submit("ann", PASSWORD, csrf=False)
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert "This form expired" in response.text
    # The form comes back with a fresh token and the same return address.
    assert (
        'name="csrf_token"' in response.text and 'value="https://localhost:3000/"' in response.text
    )


def test_post_with_forged_csrf_token_is_refused(auth):
    auth.user("ann")
    auth.csrf_token()  # a session exists, but the posted token is not its own
    response = auth.client.post(
        "/auth/sign-in",
        base_url=BASE_URL,
        headers={"Referer": BASE_URL + "/auth/sign-in"},
        data={
            "username": "ann",
            "password": PASSWORD,
            "return_uri": VIEWER + "/",
            "csrf_token": "forged.token.value",
        },
    )
    assert response.status_code == 400 and "Location" not in response.headers


def test_csrf_token_from_another_session_is_refused(app, auth):
    auth.user("ann")
    stolen = auth.csrf_token()
    victim = app.test_client()  # a browser without the attacker's session cookie
    response = victim.post(
        "/auth/sign-in",
        base_url=BASE_URL,
        headers={"Referer": BASE_URL + "/auth/sign-in"},
        data={
            "username": "ann",
            "password": PASSWORD,
            "return_uri": VIEWER + "/",
            "csrf_token": stolen,
        },
    )
    assert response.status_code == 400 and "Location" not in response.headers


def test_cross_site_referer_is_refused(auth):
    auth.user("ann")
    token = auth.csrf_token()
    response = auth.client.post(
        "/auth/sign-in",
        base_url=BASE_URL,
        headers={"Referer": "https://evil.com/page"},
        data={
            "username": "ann",
            "password": PASSWORD,
            "return_uri": VIEWER + "/",
            "csrf_token": token,
        },
    )
    assert response.status_code == 400 and "Location" not in response.headers


def test_csrf_failure_with_bad_return_uri_shows_error_page(auth):
    response = auth.client.post(
        "/auth/sign-in",
        base_url=BASE_URL,
        data={"username": "a", "password": "b", "return_uri": "https://evil.com/"},
    )
    assert response.status_code == 400
    assert "Cannot sign in" in response.text and 'name="password"' not in response.text


# --- throttling -----------------------------------------------------------------------------


@pytest.fixture
def strict_app(app_config):
    with closing(create_app({**app_config, "LOGIN_ADDRESS_FAILURE_LIMIT": 3})) as app:
        yield app


@pytest.fixture
def strict(strict_app):
    return SignInActions(strict_app, strict_app.test_client())


def test_failures_for_one_username_lock_nobody_out(strict):
    """Wrong passwords for a username from many addresses leave its right password working."""
    strict.user("ann")
    for index in range(6):
        assert strict.submit("ann", "Wrong-Passw0rd!", address=f"10.1.0.{index}").status_code == 400
    assert strict.submit("ann", PASSWORD, address="10.1.0.9").status_code == 302
    assert strict.submit("ANN", PASSWORD, address="10.1.0.10").status_code == 302
    answer = strict.sign_user(
        {"username": "ann", "password": PASSWORD, "referer": VIEWER}, address="10.1.0.11"
    )
    assert answer.status_code == 200 and answer.json["token"]


def test_failures_from_one_address_are_throttled(strict):
    """Guessing across usernames from one client is blocked; a forged X-Forwarded-For is no help."""
    strict.user("ann")
    for index in range(3):
        # nginx overwrites X-Forwarded-For; one hop is trusted, so the right-most entry counts.
        response = strict.submit(
            f"guess{index}", PASSWORD, forwarded_for=f"1.2.3.{index}, 10.2.0.1"
        )
        assert response.status_code == 400
    blocked = strict.submit("ann", PASSWORD, forwarded_for="9.9.9.9, 10.2.0.1")
    assert blocked.status_code == 429 and 0 < int(blocked.headers["Retry-After"]) <= 900
    assert "Too many failed sign-ins" in blocked.text and "Location" not in blocked.headers
    json_blocked = strict.sign_user(
        {"username": "ann", "password": PASSWORD, "referer": VIEWER}, address="10.2.0.1"
    )
    assert json_blocked.status_code == 429 and "Retry-After" in json_blocked.headers
    assert json_blocked.json["message"].startswith("Too many failed sign-ins")
    assert strict.submit("ann", PASSWORD, address="10.2.0.2").status_code == 302


def test_success_clears_the_pair_counter_not_the_address_counter(strict_app, strict):
    strict.user("ann")
    for _ in range(2):
        assert strict.submit("ann", "Wrong-Passw0rd!", address="10.3.0.1").status_code == 400
    with strict_app.app_context():
        redis, prefix = resources().redis, resources().settings.redis_key_prefix
    pair, address = (
        f"{prefix}throttle:login-pair:10.3.0.1|ann",
        f"{prefix}throttle:login-addr:10.3.0.1",
    )
    assert (redis.get(pair), redis.get(address)) == ("2", "2")
    assert strict.submit("ann", PASSWORD, address="10.3.0.1").status_code == 302
    # The pair's slow-down is over; the address keeps its count, so one valid account
    # cannot reset the count of a client guessing at others.
    assert (redis.get(pair), redis.get(address)) == (None, "2")


@pytest.mark.parametrize(
    "limits",
    [
        {"LOGIN_ADDRESS_FAILURE_LIMIT": 0},
        {"LOGIN_ADDRESS_FAILURE_LIMIT": "many"},
        {"LOGIN_FAILURE_WINDOW": -5},
        {"LOGIN_SLOWDOWN_STEP": "nan"},
        {"LOGIN_SLOWDOWN_MAX": "inf"},
        {"LOGIN_SLOWDOWN_MAX": True},
    ],
)
def test_bad_throttle_settings_stop_start_up_with_a_clear_message(app_config, limits):
    (name,) = limits
    with pytest.raises(SettingsError, match=f"^{name} must be a positive"):
        create_app({**app_config, **limits})


# --- Redis down -----------------------------------------------------------------------------


def _closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_redis_down_fails_closed_with_503(app_config):
    with closing(create_app({**app_config, "REDIS_PORT": _closed_port()})) as app:
        actions = SignInActions(app, app.test_client())
        actions.user("ann")
        assert actions.page().status_code == 200  # the form itself needs no Redis
        response = actions.submit("ann", PASSWORD)
        assert response.status_code == 503 and "Location" not in response.headers
        assert "token store does not answer" in response.text and response.headers["Retry-After"]
        response = actions.sign_user({"username": "ann", "password": PASSWORD, "referer": VIEWER})
        assert response.status_code == 503
        assert "token store does not answer" in response.json["message"]


# --- database down -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "database_url",
    [
        "sqlite:////nonexistent/dir/zhiva.db",
        "postgresql+psycopg://postgres@127.0.0.1:1/zhiva",  # nothing listens on port 1
    ],
    ids=["sqlite", "postgresql"],
)
def test_database_down_answers_503_and_counts_no_failure(app_config, database_url):
    """The driver's error is the 503 SQLAlchemy's OperationalError was; health says so too."""
    with closing(
        create_app({**app_config, "DATABASE_URL": database_url, "LOGIN_ADDRESS_FAILURE_LIMIT": 2})
    ) as app:
        actions = SignInActions(app, app.test_client())
        assert actions.page().status_code == 200  # the form itself needs no database
        # More attempts than the limit: an attempt the database could not judge is not a failure.
        for _ in range(3):
            response = actions.submit("ann", PASSWORD)
            assert response.status_code == 503 and "Location" not in response.headers
            assert response.json["message"] == DATABASE_DOWN and response.headers["Retry-After"]
            response = actions.sign_user(
                {"username": "ann", "password": PASSWORD, "referer": VIEWER}
            )
            assert response.status_code == 503 and response.json == {"message": DATABASE_DOWN}
            assert response.headers["Retry-After"]
        health = app.test_client().get("/healthz")
        assert health.status_code == 503
        assert health.json["checks"] == {"redis": True, "database": False}


# --- the shared auth-token claims -------------------------------------------------------------


def test_auth_token_claims_follow_the_public_url(app_config):
    settings = load_settings({**app_config, "PUBLIC_HOST": "pacs.example.org", "HTTPS_PORT": 443})
    assert auth_token_claims(settings) == {
        "tokenServer": "https://pacs.example.org/auth/generate-access-token",
        "refreshServer": "https://pacs.example.org/auth/refresh-token",
        "pacs": "https://pacs.example.org/zhiva/pacs",
    }
