"""The device authorization grant (RFC 8628; CONTRACT section 7, design section 5).

A script asks `POST /auth/oauth/device` (token app) for a device code and a user
code, and polls `POST /auth/oauth/token`; the user signs in at
`/auth/oauth/device/verify` (login app) and approves or denies the code. Both
apps share one real SQLite database and one real Redis. Waits are never slept:
the poll marker (the interval's clock) and the record's `expires_at` are set in
Redis instead.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any
from urllib.parse import urlencode

import pytest

from services.login_service import create_app as create_login
from services.stores.oidc_state import OidcState, digest, normalise_user_code
from services.token_service import create_app as create_token
from services.web.oidc import DEVICE_GRANT_TYPE
from tests.support.apps import closing
from tests.support.oidc import BASE_URL, CLIENT_ORIGIN, CSRF, PASSWORD, Provider

VERIFY = "/auth/oauth/device/verify"
HIDDEN_USER_CODE = re.compile(r'name="user_code" type="hidden" value="([^"]*)"')
USER_CODE = re.compile(r"^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$")


@pytest.fixture
def provider(app_config: dict[str, Any]):
    with closing(create_login(app_config)) as login, closing(create_token(app_config)) as token:
        provider = Provider(login, token)
        provider.user()
        provider.client()
        yield provider


def state_of(provider: Provider) -> OidcState:
    return provider.token.extensions["zhiva_oidc"].deps.state


def device_key(provider: Provider, device_code: str) -> str:
    return f"{state_of(provider).prefix}device:{digest(device_code)}"


def poll_key(provider: Provider, device_code: str) -> str:
    return f"{state_of(provider).prefix}device-poll:{digest(device_code)}"


def interval_passed(provider: Provider, device_code: str) -> None:
    """What waiting out the current interval does: the poll marker is gone."""
    state_of(provider).client.delete(poll_key(provider, device_code))


def start(
    provider: Provider, client_id: str | None = "app", scope: str = "openid profile", **kw: Any
) -> Any:
    data = {"client_id": client_id, "scope": scope, **kw.pop("data", {})}
    return provider.machine.post(
        "/auth/oauth/device",
        data={k: v for k, v in data.items() if v is not None},
        base_url=BASE_URL,
        **kw,
    )


def started(provider: Provider, **kw: Any) -> dict[str, Any]:
    response = start(provider, **kw)
    assert response.status_code == 200, response.text
    return response.get_json()


def poll(provider: Provider, device_code: str | None, client_id: str = "app", **data: str) -> Any:
    form = {"grant_type": DEVICE_GRANT_TYPE, "client_id": client_id, **data}
    if device_code is not None:
        form["device_code"] = device_code
    return provider.machine.post("/auth/oauth/token", data=form, base_url=BASE_URL)


def error_of(response: Any) -> str:
    assert response.status_code in (400, 401), (response.status_code, response.text)
    return response.get_json()["error"]


# --- the browser at the verify page ----------------------------------------------------------


def post_form(
    provider: Provider, page: Any, url: str, data: dict[str, str], address: str = "10.0.0.1"
) -> Any:
    """Post a page's form back with its CSRF token, as the browser does."""
    found = CSRF.search(page.text)
    assert found, page.text
    return provider.browser.post(
        url,
        data={**data, "csrf_token": found.group(1)},
        base_url=BASE_URL,
        headers={"Referer": BASE_URL + url, "X-Forwarded-For": address},
    )


def sign_in(provider: Provider, url: str = VERIFY, username: str = "ann") -> Any:
    page = provider.browser.get(url, base_url=BASE_URL)
    assert page.status_code == 200 and 'name="password"' in page.text
    response = post_form(provider, page, url, {"username": username, "password": PASSWORD})
    assert response.status_code == 303, response.text
    return response


def lookup(provider: Provider, user_code: str, address: str = "10.0.0.1") -> Any:
    page = provider.browser.get(VERIFY, base_url=BASE_URL)
    assert 'name="user_code"' in page.text, page.text
    return post_form(provider, page, VERIFY, {"step": "lookup", "user_code": user_code}, address)


def decide(provider: Provider, user_code: str, choice: str) -> Any:
    confirmation = lookup(provider, user_code)
    assert confirmation.status_code == 200, confirmation.text
    hidden = HIDDEN_USER_CODE.search(confirmation.text)
    assert hidden and hidden.group(1) == user_code
    return post_form(provider, confirmation, VERIFY, {"user_code": user_code, "choice": choice})


def approved(provider: Provider, **kw: Any) -> dict[str, Any]:
    """A device code the signed-in user approved."""
    codes = started(provider, **kw)
    response = decide(provider, codes["user_code"], "approve")
    assert response.status_code == 200 and "Device connected" in response.text
    return codes


# --- the device authorization endpoint -------------------------------------------------------


def test_device_authorization_answers_the_codes(provider: Provider):
    response = start(provider)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    codes = response.get_json()
    assert set(codes) == {
        "device_code",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
        "expires_in",
        "interval",
    }
    issuer = provider.token.extensions["zhiva"].settings.oidc_issuer
    assert codes["verification_uri"] == issuer + "/oauth/device/verify"
    assert codes["verification_uri_complete"] == (
        codes["verification_uri"] + "?" + urlencode({"user_code": codes["user_code"]})
    )
    assert (codes["expires_in"], codes["interval"]) == (600, 5)
    assert USER_CODE.match(codes["user_code"])
    assert len(codes["device_code"]) >= 40
    # Stored under digests only, pending, outliving its user code by the grace period.
    client = state_of(provider).client
    secrets = (codes["device_code"], codes["user_code"], normalise_user_code(codes["user_code"]))
    keys = client.keys(state_of(provider).prefix + "*")
    assert len(keys) == 2  # the device record and its user code
    assert not [key for key in keys for secret in secrets if secret in key]
    record = client.hgetall(device_key(provider, codes["device_code"]))
    assert record["status"] == "pending" and record["client_id"] == "app"
    assert record["scope"] == "openid profile"
    assert 600 < client.ttl(device_key(provider, codes["device_code"])) <= 900
    # Never from the request's Host.
    other = started(provider, headers={"Host": "evil.example"})
    assert other["verification_uri"] == codes["verification_uri"]


def test_device_authorization_refuses_a_client_it_cannot_authenticate(provider: Provider):
    provider.client("conf", confidential=True)
    for client_id, headers in (
        ("nobody", {}),  # unknown
        (None, {}),
        ("bad id", {}),
        ("conf", {}),  # confidential, without its secret
        ("app", {"Origin": "https://evil.example"}),
    ):
        response = start(provider, client_id, headers=headers)
        assert response.status_code in (400, 401), client_id
        assert response.get_json()["error"] == "invalid_client", client_id
        assert "Access-Control-Allow-Origin" not in response.headers


def test_device_authorization_takes_a_confidential_client_and_the_clients_origin(
    provider: Provider,
):
    secret = provider.client("conf", confidential=True)
    assert secret
    assert start(provider, "conf", data={"client_secret": secret}).status_code == 200
    response = start(provider, headers={"Origin": CLIENT_ORIGIN})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == CLIENT_ORIGIN


# --- polling ---------------------------------------------------------------------------------


def test_polling_is_pending_then_slow_down_and_the_raised_interval_stays(provider: Provider):
    codes = started(provider)
    device_code = codes["device_code"]
    client = state_of(provider).client
    assert error_of(poll(provider, device_code)) == "authorization_pending"
    # Again at once: too fast, and the interval grows by 5 s.
    assert error_of(poll(provider, device_code)) == "slow_down"
    assert client.hget(device_key(provider, device_code), "interval") == "10"
    # After the old interval (5 s) the new one (10 s) has not passed: still too fast.
    client.pexpire(poll_key(provider, device_code), 5000)
    assert error_of(poll(provider, device_code)) == "slow_down"
    assert client.hget(device_key(provider, device_code), "interval") == "15"
    assert 10_000 < client.pttl(poll_key(provider, device_code)) <= 15_000
    # Once the raised interval has passed: pending again, and the interval is kept.
    interval_passed(provider, device_code)
    assert error_of(poll(provider, device_code)) == "authorization_pending"
    assert client.hget(device_key(provider, device_code), "interval") == "15"
    assert 10_000 < client.pttl(poll_key(provider, device_code)) <= 15_000


def test_polling_without_a_known_device_code_or_client_is_refused(provider: Provider):
    for device_code in (None, "", "not-a-device-code"):
        assert error_of(poll(provider, device_code)) == "invalid_request", device_code
    codes = started(provider)
    assert error_of(poll(provider, codes["device_code"], "nobody")) == "invalid_client"
    # None of that counted as a poll of the real code.
    assert error_of(poll(provider, codes["device_code"])) == "authorization_pending"


# --- the verify page --------------------------------------------------------------------------


def test_the_verify_page_signs_in_then_asks_for_the_code(provider: Provider):
    page = provider.browser.get(VERIFY, base_url=BASE_URL)
    assert page.status_code == 200
    for name in ('name="username"', 'name="password"', 'name="csrf_token"'):
        assert name in page.text
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"
    # Without its CSRF token the form is refused and nobody is signed in.
    bare = provider.browser.post(
        VERIFY,
        data={"username": "ann", "password": PASSWORD},
        base_url=BASE_URL,
        headers={"Referer": BASE_URL + VERIFY},
    )
    assert bare.status_code == 400
    assert "zhiva_oidc" not in bare.headers.get("Set-Cookie", "")
    # A wrong password: the form again.
    wrong = post_form(provider, page, VERIFY, {"username": "ann", "password": "wrong-Passw0rd!"})
    assert wrong.status_code == 400 and 'name="password"' in wrong.text
    response = sign_in(provider)
    assert response.headers["Location"].endswith(VERIFY)
    assert "__Host-zhiva_oidc=" in response.headers["Set-Cookie"]
    code_page = provider.browser.get(VERIFY, base_url=BASE_URL)
    assert code_page.status_code == 200
    assert 'name="user_code"' in code_page.text and 'name="password"' not in code_page.text


def test_a_wrong_code_is_refused_and_ten_of_them_are_throttled(provider: Provider):
    codes = started(provider)
    sign_in(provider)
    address = "10.7.7.7"
    for attempt in range(10):
        response = lookup(provider, f"ZZZZ-ZZ{attempt:02d}", address)
        assert response.status_code == 400, attempt
        assert "unknown or has expired" in response.text
    # Even the right code is refused from that address now.
    blocked = lookup(provider, codes["user_code"], address)
    assert blocked.status_code == 429
    assert 0 < int(blocked.headers["Retry-After"]) <= 900
    assert "Connect this device?" not in blocked.text
    # Another address still may, and the code still works.
    assert lookup(provider, codes["user_code"], "10.7.7.8").status_code == 200


def test_the_prefilled_code_only_fills_the_form(provider: Provider):
    codes = started(provider)
    interval_passed(provider, codes["device_code"])
    complete = VERIFY + "?" + urlencode({"user_code": codes["user_code"]})
    # Signing in from verification_uri_complete comes back to it, code filled in.
    assert sign_in(provider, complete).headers["Location"].endswith(complete)
    page = provider.browser.get(complete, base_url=BASE_URL)
    assert page.status_code == 200
    assert f'value="{codes["user_code"]}"' in page.text
    assert "Approve" not in page.text
    assert error_of(poll(provider, codes["device_code"])) == "authorization_pending"
    # The confirmation page approves nothing either: only its button does.
    confirmation = lookup(provider, codes["user_code"])
    assert confirmation.status_code == 200 and "Approve" in confirmation.text
    assert "openid profile" in confirmation.text and "ann" in confirmation.text
    # Nor a decision without the page's CSRF token.
    forged = provider.browser.post(
        VERIFY,
        data={"user_code": codes["user_code"], "choice": "approve"},
        base_url=BASE_URL,
        headers={"Referer": BASE_URL + VERIFY},
    )
    assert forged.status_code == 400
    interval_passed(provider, codes["device_code"])
    assert error_of(poll(provider, codes["device_code"])) == "authorization_pending"


# --- approve, deny, expire ----------------------------------------------------------------------


def test_approval_gives_tokens_once(provider: Provider):
    sign_in(provider)
    codes = approved(provider)
    response = poll(provider, codes["device_code"])
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    tokens = response.get_json()
    assert tokens["token_type"].lower() == "bearer"
    assert "id_token" not in tokens
    claims = provider.token.extensions["zhiva"].codec.verify_oidc_access(tokens["access_token"])
    assert claims["client_id"] == "app"
    assert claims["preferred_username"] == "ann"
    assert claims["scope"] == "openid profile"
    user = provider.login.extensions["zhiva"].db.find("ann")
    assert claims["sub"] == user.subject
    assert tokens["refresh_token"].startswith(claims["fam"] + ".")
    # Tokens once: the next poll finds no device code.
    again = poll(provider, codes["device_code"])
    assert error_of(again) in ("invalid_request", "invalid_grant")
    assert "access_token" not in again.get_json()
    # The refresh token works, in its own family.
    refreshed = provider.refresh(tokens["refresh_token"])
    assert refreshed.status_code == 200
    refreshed_claims = provider.token.extensions["zhiva"].codec.verify_oidc_access(
        refreshed.get_json()["access_token"]
    )
    assert refreshed_claims["fam"] == claims["fam"]
    # The user code is used up too.
    assert lookup(provider, codes["user_code"]).status_code == 400


def test_two_polls_racing_after_approval_get_one_answer(provider: Provider):
    sign_in(provider)
    codes = approved(provider)
    statuses: list[int] = []

    def redeem() -> None:
        client = provider.token.test_client()
        data = {
            "grant_type": DEVICE_GRANT_TYPE,
            "device_code": codes["device_code"],
            "client_id": "app",
        }
        statuses.append(client.post("/auth/oauth/token", data=data, base_url=BASE_URL).status_code)

    threads = [threading.Thread(target=redeem) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [400] * 7


def test_denial_is_access_denied_for_good(provider: Provider):
    sign_in(provider)
    codes = started(provider)
    response = decide(provider, codes["user_code"], "deny")
    assert response.status_code == 200 and "Device refused" in response.text
    assert error_of(poll(provider, codes["device_code"])) == "access_denied"
    assert error_of(poll(provider, codes["device_code"])) == "access_denied"
    # The code cannot be approved after all.
    assert lookup(provider, codes["user_code"]).status_code == 400


def test_an_expired_device_code_is_expired_token(provider: Provider):
    sign_in(provider)
    client = state_of(provider).client
    past = str(int(time.time()) - 1)
    codes = started(provider)
    client.hset(device_key(provider, codes["device_code"]), "expires_at", past)
    assert error_of(poll(provider, codes["device_code"])) == "expired_token"
    # Nobody can approve it any more.
    assert lookup(provider, codes["user_code"]).status_code == 400
    # Approved, then expired before the poll: no tokens either.
    late = approved(provider)
    client.hset(device_key(provider, late["device_code"]), "expires_at", past)
    assert error_of(poll(provider, late["device_code"])) == "expired_token"
    # Past the grace period the record itself is gone: an unknown code.
    client.delete(device_key(provider, late["device_code"]))
    assert error_of(poll(provider, late["device_code"])) == "invalid_request"


def test_another_client_cannot_poll_the_device_code(provider: Provider):
    provider.client("other")
    sign_in(provider)
    codes = approved(provider)
    assert error_of(poll(provider, codes["device_code"], "other")) == "unauthorized_client"
    # Not spent by the other client: its own client still gets the tokens.
    assert poll(provider, codes["device_code"]).status_code == 200


def test_a_user_disabled_after_approval_gets_no_tokens(provider: Provider):
    from services.stores.accounts import set_disabled

    sign_in(provider)
    codes = approved(provider)
    database = provider.database()
    try:
        with database.session() as session:
            set_disabled(session, "ann")
    finally:
        database.engine.dispose()
    assert error_of(poll(provider, codes["device_code"])) == "invalid_grant"


# --- the tokens' scope at userinfo ------------------------------------------------------------


def _userinfo(provider: Provider, access_token: str) -> Any:
    return provider.machine.get(
        "/auth/oauth/userinfo",
        base_url=BASE_URL,
        headers={"Authorization": f"Bearer {access_token}"},
    )


def test_userinfo_needs_the_openid_scope(provider: Provider):
    sign_in(provider)
    without = approved(provider, scope="profile")
    tokens = poll(provider, without["device_code"]).get_json()
    response = _userinfo(provider, tokens["access_token"])
    assert response.status_code == 403
    assert response.get_json()["error"] == "insufficient_scope"

    with_openid = approved(provider, scope="openid profile")
    tokens = poll(provider, with_openid["device_code"]).get_json()
    response = _userinfo(provider, tokens["access_token"])
    assert response.status_code == 200
    assert response.get_json()["preferred_username"] == "ann"
