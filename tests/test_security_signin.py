"""Sign-in throttling an attacker cannot turn against a user (services/login_service/signin.py).

Failures count per (username, client address) and per client address, in
Redis. A pair's failures slow that pair's next answers down; an address that
fails too often, across any usernames, is refused with 429 and Retry-After.
No counter is per username alone, so nobody can lock a user out from
elsewhere. Each test pairs what the attacker's failures cause with an
accepted control twin. Real Redis, real SQLite, real bcrypt; the last test
goes through nginx.
"""

from __future__ import annotations

import time
import uuid

import pytest
import requests

from services.login_service import create_app
from services.stores.throttle import MAX_SLOWDOWN_SECONDS, slowdown_seconds
from services.web.app import resources
from tests.conftest import ADMIN_PASSWORD
from tests.support.login import PASSWORD, VIEWER, SignInActions

WRONG = "Wrong-Passw0rd!"
ATTACKER, USER = "10.66.0.1", "10.77.0.1"


@pytest.fixture
def make_app(app_config):
    """A login app (a worker) with these limits; every one made shares the test's Redis prefix."""
    apps = []

    def make(**limits: object) -> SignInActions:
        app = create_app({**app_config, **limits})
        apps.append(app)
        return SignInActions(app, app.test_client())

    yield make
    for app in apps:
        app.extensions["zhiva"].close()


def redis_of(actions: SignInActions):
    with actions.app.app_context():
        return resources().redis, resources().settings.redis_key_prefix


def timed(call, *args, **kwargs):
    started = time.perf_counter()
    response = call(*args, **kwargs)
    return response, time.perf_counter() - started


def sign_user(actions: SignInActions, username: str, password: str, address: str):
    body = {"username": username, "password": password, "referer": VIEWER}
    return actions.sign_user(body, address=address)


def test_the_slow_down_grows_with_failures_and_is_bounded():
    assert [slowdown_seconds(n) for n in (0, 1, 2, 4)] == [0.0, 0.25, 0.5, 1.0]
    assert slowdown_seconds(1000) == MAX_SLOWDOWN_SECONDS
    assert [slowdown_seconds(n, 1.5, 3.0) for n in (0, 1, 2, 3, 50)] == [0, 1.5, 3, 3, 3]


def test_an_attackers_failures_for_a_user_do_not_stop_the_user_from_another_address(make_app):
    login = make_app(LOGIN_ADDRESS_FAILURE_LIMIT=5, LOGIN_SLOWDOWN_STEP=0.01)
    login.user("ann")
    # More failures for ann than the old per-username lock allowed, from several addresses,
    # one of them until it is refused itself.
    for _ in range(5):
        assert login.submit("ann", WRONG, address=ATTACKER).status_code == 400
    for index in range(3):
        for _ in range(2):
            assert login.submit("ann", WRONG, address=f"10.66.1.{index}").status_code == 400
    assert login.submit("ann", PASSWORD, address=ATTACKER).status_code == 429
    # Control twin: ann herself, from her own address, on both paths.
    assert login.submit("ann", PASSWORD, address=USER).status_code == 302
    answer = sign_user(login, "ann", PASSWORD, USER)
    assert answer.status_code == 200 and answer.json["token"]


def test_the_failing_address_is_slowed_down_and_another_is_not(make_app):
    login = make_app(LOGIN_SLOWDOWN_STEP=1.5, LOGIN_SLOWDOWN_MAX=3)
    login.user("ann")
    first, _ = timed(login.submit, "ann", WRONG, address=ATTACKER)
    second, waited = timed(login.submit, "ann", WRONG, address=ATTACKER)
    assert (first.status_code, second.status_code) == (400, 400)
    assert waited >= 1.5
    # The third answer to this pair waits for two failures, whatever the password:
    # slowed, not refused.
    answer, waited = timed(login.submit, "ann", PASSWORD, address=ATTACKER)
    assert answer.status_code == 302 and waited >= 3.0
    # The JSON path counts and waits the same way.
    assert sign_user(login, "ann", WRONG, ATTACKER).status_code == 400
    answer, waited = timed(sign_user, login, "ann", WRONG, ATTACKER)
    assert answer.status_code == 400 and waited >= 1.5
    # Control twin: the right password from another address waits for nobody's failures.
    answer, waited = timed(login.submit, "ann", PASSWORD, address=USER)
    assert answer.status_code == 302 and waited < 3.0


def test_an_address_failing_across_many_usernames_is_refused_with_retry_after(make_app):
    login = make_app(LOGIN_ADDRESS_FAILURE_LIMIT=5, LOGIN_FAILURE_WINDOW=3)
    login.user("ann")
    for index in range(5):
        assert login.submit(f"guess{index}", WRONG, address=ATTACKER).status_code == 400
    refused = login.submit("ann", PASSWORD, address=ATTACKER)
    assert refused.status_code == 429 and "Location" not in refused.headers
    assert 1 <= int(refused.headers["Retry-After"]) <= 3
    assert "Too many failed sign-ins from this network address" in refused.text
    refused = sign_user(login, "ann", PASSWORD, ATTACKER)
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 3
    assert refused.json["message"].startswith("Too many failed sign-ins")
    # Control twins: another address at once, and this one once its window has passed.
    assert login.submit("ann", PASSWORD, address=USER).status_code == 302
    time.sleep(int(refused.headers["Retry-After"]) + 0.5)
    assert login.submit("ann", PASSWORD, address=ATTACKER).status_code == 302


def test_the_counters_live_in_redis_and_every_worker_sees_them(make_app):
    limits = {"LOGIN_ADDRESS_FAILURE_LIMIT": 3, "LOGIN_SLOWDOWN_STEP": 1.0}
    one, two = make_app(**limits), make_app(**limits)
    one.user("ann")
    for _ in range(2):
        assert one.submit("ann", WRONG, address=ATTACKER).status_code == 400
    redis, prefix = redis_of(one)
    pair, address = (
        f"{prefix}throttle:login-pair:{ATTACKER}|ann",
        f"{prefix}throttle:login-addr:{ATTACKER}",
    )
    assert (redis.get(pair), redis.get(address)) == ("2", "2")
    assert 0 < redis.ttl(pair) <= 900 and 0 < redis.ttl(address) <= 900
    # The other worker waits for the first one's failures, then its own third one refuses.
    answer, waited = timed(two.submit, "ann", WRONG, address=ATTACKER)
    assert answer.status_code == 400 and waited >= 2.0
    assert one.submit("ann", PASSWORD, address=ATTACKER).status_code == 429
    # Control twin: either worker signs the user in from another address.
    assert two.submit("ann", PASSWORD, address=USER).status_code == 302
    assert one.submit("ann", PASSWORD, address=USER).status_code == 302


JUNK_USERNAMES = {
    "60 000 characters": "x" * 60_000,
    "long non-ASCII": "\u00e4\u0436\u6f22" * 2_000,
    "too long by one": "a" * 65,
    "control characters": "ann\x00\x1b[2J",
    "look-alike": "\u0430nn",
    "markup": "<script>alert(1)</script>",
    "key separators": "ann|10.0.0.1:*",
}


@pytest.mark.parametrize("username", JUNK_USERNAMES.values(), ids=JUNK_USERNAMES.keys())
def test_junk_usernames_make_no_long_redis_keys(make_app, username):
    login = make_app()
    redis, prefix = redis_of(login)
    assert sign_user(login, username, WRONG, ATTACKER).status_code == 400
    assert login.submit(username[:10_000], WRONG, address=ATTACKER).status_code == 400
    keys = sorted(key.removeprefix(prefix) for key in redis.keys(prefix + "*"))
    assert keys and all(len(key) <= 80 for key in keys), keys
    assert all(key.startswith(f"throttle:login-pair:{ATTACKER}|x-") for key in keys[1:]), keys
    # Control twin: a real username is counted under its own, readable name.
    assert sign_user(login, "ann", WRONG, ATTACKER).status_code == 400
    assert redis.get(f"{prefix}throttle:login-pair:{ATTACKER}|ann") == "1"


def test_a_junk_client_address_makes_no_long_redis_key(make_app):
    login = make_app()
    redis, prefix = redis_of(login)
    assert sign_user(login, "ann", WRONG, "not-an-address" * 500).status_code == 400
    assert sign_user(login, "ann", WRONG, "2001:db8:1:2:aaaa::1").status_code == 400
    keys = {key.removeprefix(prefix) for key in redis.keys(prefix + "*")}
    assert all(len(key) <= 80 for key in keys), keys
    # An IPv6 client counts by its /64, whichever of its addresses it uses.
    assert sign_user(login, "ann", WRONG, "2001:db8:1:2:bbbb::7").status_code == 400
    assert redis.get(f"{prefix}throttle:login-addr:2001:db8:1:2::/64") == "2"
    # Control twin: an IPv4 address is its own key.
    assert redis.get(f"{prefix}throttle:login-addr:{ATTACKER}") is None
    assert sign_user(login, "ann", WRONG, ATTACKER).status_code == 400
    assert redis.get(f"{prefix}throttle:login-addr:{ATTACKER}") == "1"


SPOOFED = {
    "X-Forwarded-For": "198.51.100.23",
    "X-Real-IP": "198.51.100.23",
    "Forwarded": "for=198.51.100.23",
}


@pytest.mark.stack
def test_through_nginx_the_counters_use_the_address_nginx_saw(stack):
    """Spoofed client-address headers from outside neither move nor escape the counters."""
    username = f"signin-{uuid.uuid4().hex[:8]}"
    with stack.http() as http:
        created = http.post(
            f"{stack.base_url}/auth/generate-token",
            json={
                "name": "Sign-in Test",
                "username": username,
                "password": ADMIN_PASSWORD,
                "userPassword": PASSWORD,
                "createUserIfNotExists": True,
            },
            timeout=30,
        )
        assert created.status_code == 200, created.text
    redis, prefix = stack.redis(), stack.settings.redis_key_prefix
    address = f"{prefix}throttle:login-addr:127.0.0.1"
    pair = f"{prefix}throttle:login-pair:127.0.0.1|{username}"
    redis.delete(address, pair)

    def sign_in(password: str) -> requests.Response:
        with stack.http() as http:
            body = {"username": username, "password": password, "referer": VIEWER}
            return http.post(
                f"{stack.base_url}/auth/sign-user", json=body, headers=SPOOFED, timeout=30
            )

    try:
        assert [sign_in(WRONG).status_code for _ in range(2)] == [400, 400]
        assert (redis.get(address), redis.get(pair)) == ("2", "2")
        assert not redis.keys(f"{prefix}throttle:*198.51.100*")
        # Control twin: the right password, slowed by the pair's failures, not refused.
        answer = sign_in(PASSWORD)
        assert answer.status_code == 200 and answer.json()["token"]
    finally:
        redis.delete(address, pair)
