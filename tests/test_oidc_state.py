"""The OIDC provider's Redis state (services/stores/oidc_state.py) on a real Redis.

What it must keep: a code or a refresh token works exactly once however many
workers race for it; a replayed one revokes its family through the same key
and stream the policy's mirror follows; nothing secret is readable in Redis;
and an unreachable Redis is StoreUnavailable (a 503), never a grant.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.stores.oidc_state import OidcState, digest, normalise_user_code
from services.stores.revocation import (
    RevocationMirror,
    RevocationStore,
    StoreUnavailable,
    redis_client,
    revoked_key,
)
from tests.support.processes import free_port, wait_until
from tests.support.redis_server import RedisServer

DAY = 24 * 3600
RACERS = 20


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex}:"


@pytest.fixture
def revocations(redis_server: RedisServer, prefix: str) -> RevocationStore:
    return RevocationStore(redis_client(redis_server.url), prefix, keep_seconds=3600)


@pytest.fixture
def state(revocations: RevocationStore, prefix: str) -> OidcState:
    return OidcState(revocations.client, prefix, revocations)


@pytest.fixture
def mirror(redis_server: RedisServer, prefix: str) -> Iterator[RevocationMirror]:
    mirror = RevocationMirror(redis_server.url, prefix)
    yield mirror
    mirror.stop()


def _family() -> str:
    return uuid.uuid4().hex


def _code_record(family: str) -> dict[str, Any]:
    return {
        "client_id": "zhiva-viewer",
        "redirect_uri": "https://localhost/viewer/callback",
        "scope": "openid profile",
        "nonce": "n1",
        "auth_time": 1700000000,
        "code_challenge": "x" * 43,
        "code_challenge_method": "S256",
        "username": "alice",
        "subject": str(uuid.uuid4()),
        "family": family,
        "session": None,
    }


def _refresh_record(family: str, client_id: str = "zhiva-viewer") -> dict[str, Any]:
    return {
        "family": family,
        "client_id": client_id,
        "username": "alice",
        "subject": "5f0c1a9e-0000-4000-8000-000000000001",
        "scope": "openid profile offline_access",
        "auth_time": 1700000000,
    }


def _keys(state: OidcState) -> list[str]:
    return sorted(state.client.scan_iter(match=state.prefix + "*"))


def _race(call: Callable[[], Any]) -> list[Any]:
    """`call` from RACERS threads released together; their results."""
    barrier = threading.Barrier(RACERS)
    results: list[Any] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait()
        result = call()
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(results) == RACERS
    return results


# Authorization codes


def test_a_code_is_taken_once_then_names_its_family(state):
    code, family = secrets.token_urlsafe(36), _family()
    record = _code_record(family)
    state.save_code(code, record)
    assert state.take_code(code) == ("ok", record)  # the JSON, its types kept
    assert state.take_code(code) == ("reused", {"family": family})
    assert state.take_code(code) == ("reused", {"family": family})
    assert state.take_code(secrets.token_urlsafe(36)) == ("unknown", None)


def test_a_code_lives_at_most_60_seconds_and_its_marker_600(state):
    code = secrets.token_urlsafe(36)
    state.save_code(code, _code_record(_family()))
    key = f"{state.prefix}code:{digest(code)}"
    assert 0 < state.client.ttl(key) <= 60
    state.take_code(code)
    assert not state.client.exists(key)
    assert 0 < state.client.ttl(f"{state.prefix}code-used:{digest(code)}") <= 600
    short = secrets.token_urlsafe(36)
    state.save_code(short, _code_record(_family()), ttl=5)
    assert 0 < state.client.ttl(f"{state.prefix}code:{digest(short)}") <= 5
    with pytest.raises(ValueError):
        state.save_code(secrets.token_urlsafe(36), _code_record(_family()), ttl=61)


def test_an_expired_code_is_unknown(state):
    code = secrets.token_urlsafe(36)
    state.save_code(code, _code_record(_family()), ttl=1)
    state.client.pexpire(f"{state.prefix}code:{digest(code)}", 1)
    time.sleep(0.05)
    assert state.take_code(code) == ("unknown", None)


def test_a_code_needs_a_family_and_is_never_overwritten(state):
    record = _code_record(_family())
    del record["family"]
    with pytest.raises(ValueError):
        state.save_code(secrets.token_urlsafe(36), record)
    code, first = secrets.token_urlsafe(36), _code_record(_family())
    state.save_code(code, first)
    with pytest.raises(RuntimeError):
        state.save_code(code, _code_record(_family()))
    assert state.take_code(code) == ("ok", first)


def test_racing_redemptions_of_a_code_have_one_winner(state):
    code, family = secrets.token_urlsafe(36), _family()
    state.save_code(code, _code_record(family))
    results = _race(lambda: state.take_code(code))
    assert [outcome for outcome, _ in results].count("ok") == 1
    # Every loser names the family the winner got, so it can be revoked.
    assert sorted(results, key=lambda r: r[0] != "ok")[1:] == [("reused", {"family": family})] * (
        RACERS - 1
    )


def test_nonces_are_remembered_per_client_and_checked_read_only(state):
    assert not state.nonce_used("zhiva-viewer", "n1")
    assert _keys(state) == []  # asking wrote nothing
    state.remember_nonce("zhiva-viewer", "n1", 3600)
    assert state.nonce_used("zhiva-viewer", "n1")
    assert not state.nonce_used("other", "n1")
    assert not state.nonce_used("zhiva-viewer", "n2")
    (key,) = _keys(state)
    assert key == f"{state.prefix}nonce:zhiva-viewer:{digest('n1')}"
    assert 3590 < state.client.ttl(key) <= 3600
    state.remember_nonce("zhiva-viewer", "n1", 10)  # NX: the first expiry stays
    assert state.client.ttl(key) > 10


# Refresh tokens


def test_a_refresh_token_rotates_once(state):
    token, family = f"{_family()}.{secrets.token_urlsafe(32)}", _family()
    expires_at = int(time.time()) + DAY
    state.save_refresh(token, _refresh_record(family), expires_at)
    expected = {key: str(value) for key, value in _refresh_record(family).items()}
    assert state.find_refresh(token) == expected | {"spent": "0"}
    assert state.rotate_refresh(token, "zhiva-viewer") == ("ok", expected | {"spent": "1"})
    assert state.find_refresh(token) == expected | {"spent": "1"}
    # Absolute: the record ends with its family, not a lifetime after the last use.
    assert abs(state.client.expiretime(f"{state.prefix}rt:{digest(token)}") - expires_at) <= 1
    assert state.rotate_refresh(f"{family}.unknown", "zhiva-viewer") == ("unknown", None)
    assert state.find_refresh("nothing") is None


def test_reusing_a_spent_refresh_token_revokes_its_family(state, revocations, mirror):
    family = _family()
    family_expires_at = int(time.time()) + DAY
    first, second = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    state.save_refresh(first, _refresh_record(family), family_expires_at)
    assert state.rotate_refresh(first, "zhiva-viewer")[0] == "ok"
    state.save_refresh(second, _refresh_record(family), family_expires_at)
    assert mirror.wait_synced(5)
    assert not mirror.is_revoked("fam:" + family)

    assert state.rotate_refresh(first, "zhiva-viewer") == ("reused", None)
    assert state.family_revoked(family)
    # Written as RevocationStore.revoke writes it: the key and one stream entry.
    key = revoked_key(revocations.prefix, "fam:" + family)
    remaining = family_expires_at - time.time()
    assert remaining + 3600 - 2 <= state.client.ttl(key) <= remaining + 3600 + 2
    ((_, fields),) = state.client.xrange(revocations.stream)
    assert fields["jti"] == "fam:" + family
    assert abs(int(fields["exp"]) - (family_expires_at + 3600)) <= 2
    wait_until(lambda: mirror.is_revoked("fam:" + family), 2, "family mirrored", interval=0.01)
    # The newest token of the family is refused too, and nothing is announced twice.
    assert state.rotate_refresh(second, "zhiva-viewer") == ("revoked", None)
    assert state.rotate_refresh(first, "zhiva-viewer") == ("revoked", None)
    assert state.client.xlen(revocations.stream) == 1


def test_another_clients_refresh_token_is_refused_and_not_spent(state):
    token, family = secrets.token_urlsafe(32), _family()
    state.save_refresh(token, _refresh_record(family), int(time.time()) + DAY)
    assert state.rotate_refresh(token, "intruder") == ("wrong_client", None)
    assert state.find_refresh(token)["spent"] == "0"
    assert not state.family_revoked(family)
    assert state.rotate_refresh(token, "zhiva-viewer")[0] == "ok"


def test_racing_rotations_of_a_refresh_token_have_one_winner(state, revocations):
    token, family = secrets.token_urlsafe(32), _family()
    state.save_refresh(token, _refresh_record(family), int(time.time()) + DAY)
    outcomes = sorted(
        outcome for outcome, _ in _race(lambda: state.rotate_refresh(token, "zhiva-viewer"))
    )
    # The first loser revokes the family; the others find it revoked.
    assert outcomes == sorted(["ok", "reused"] + ["revoked"] * (RACERS - 2))
    assert state.client.xlen(revocations.stream) == 1


def test_a_family_is_revoked_on_request(state, revocations, mirror):
    token, family = secrets.token_urlsafe(32), _family()
    state.save_refresh(token, _refresh_record(family), int(time.time()) + DAY)
    assert not state.family_revoked(family)
    state.revoke_family(family, int(time.time()) + DAY)
    assert state.family_revoked(family)
    assert revocations.is_revoked("fam:" + family)
    assert mirror.wait_synced(5)
    assert mirror.is_revoked("fam:" + family)
    assert state.rotate_refresh(token, "zhiva-viewer") == ("revoked", None)
    assert state.find_refresh(token)["spent"] == "0"  # the revocation endpoint may still read it


def test_refresh_records_are_checked(state):
    expires_at = int(time.time()) + DAY
    with pytest.raises(ValueError):
        state.save_refresh("t1", {"family": _family()}, expires_at)
    with pytest.raises(ValueError):
        state.save_refresh("t2", _refresh_record(_family()) | {"spent": "1"}, expires_at)
    with pytest.raises(TypeError):
        state.save_refresh("t3", _refresh_record(_family()) | {"admin": True}, expires_at)
    with pytest.raises(TypeError):
        state.save_refresh("t4", _refresh_record(_family()) | {"scope": None}, expires_at)
    state.save_refresh("t5", _refresh_record(_family()), expires_at)
    with pytest.raises(RuntimeError):  # never reset to unspent
        state.save_refresh("t5", _refresh_record(_family()), expires_at)
    assert _keys(state) == [f"{state.prefix}rt:{digest('t5')}"]


# Provider sessions


def test_a_session_holds_its_record_and_families_until_it_ends(state):
    record = {"username": "alice", "subject": "s-1", "generation": 3, "auth_time": 1700000000}
    session_id = state.create_session(record, 43200)
    assert len(session_id) == 43  # 256 bits, URL-safe
    assert state.create_session(record, 43200) != session_id
    assert state.session(session_id) == {key: str(value) for key, value in record.items()}
    key = f"{state.prefix}session:{digest(session_id)}"
    assert 43190 < state.client.ttl(key) <= 43200

    assert state.end_session("never-made") == []
    family_a, family_b = _family(), _family()
    assert state.add_session_family(session_id, family_a)
    assert state.add_session_family(session_id, family_b)
    assert state.add_session_family(session_id, family_a)
    # The set ends with the session.
    ends = state.client.pexpiretime(key)
    assert abs(state.client.pexpiretime(key + ":families") - ends) <= 10

    assert sorted(state.end_session(session_id)) == sorted([family_a, family_b])
    assert state.session(session_id) is None
    assert not state.client.exists(key, key + ":families")
    assert state.end_session(session_id) == []
    # A family issued after the logout is reported, so the caller can revoke it.
    assert not state.add_session_family(session_id, _family())
    assert not state.client.exists(key + ":families")


def test_a_session_ends_at_its_lifetime(state):
    session_id = state.create_session({"username": "alice"}, 1)
    assert state.session(session_id) is not None
    time.sleep(1.1)
    assert state.session(session_id) is None


def test_no_secret_is_readable_in_redis(state):
    code, token, device_code = (secrets.token_urlsafe(32) for _ in range(3))
    state.save_code(code, _code_record(_family()))
    state.save_refresh(token, _refresh_record(_family()), int(time.time()) + DAY)
    session_id = state.create_session({"username": "alice"}, 600)
    state.save_device(device_code, "BCDF-GHJK", {"client_id": "cli"}, 600, 5)
    state.remember_nonce("zhiva-viewer", "secret-nonce", 600)
    keys = _keys(state)
    assert len(keys) == 6
    stored = list(keys)
    for key in keys:
        if state.client.type(key) == "hash":
            stored += [f"{field}={value}" for field, value in state.client.hgetall(key).items()]
        else:
            stored.append(state.client.get(key))
    everything = " ".join(stored)
    for secret in (code, token, session_id, device_code, "secret-nonce"):
        assert secret not in everything
    # The user code is shown to the user and kept in its record (authlib reads it
    # there), but no key is named by it.
    assert "BCDF" not in " ".join(keys)


# Device authorization grant


def _device(state: OidcState, *, expires_in: int = 600, interval: int = 5) -> tuple[str, str]:
    device_code = secrets.token_urlsafe(32)
    letters = [secrets.choice(USER_CODE_LETTERS) for _ in range(8)]
    user_code = "".join(letters[:4]) + "-" + "".join(letters[4:])  # as authlib makes them
    state.save_device(
        device_code, user_code, {"client_id": "cli", "scope": "openid"}, expires_in, interval
    )
    return device_code, user_code


USER_CODE_LETTERS = "BCDFGHJKLMNPQRSTVWXZ"
GRANT = {"username": "alice", "subject": "s-1", "generation": 2, "auth_time": 1700000000}


def test_a_device_code_is_stored_pending(state):
    device_code, user_code = _device(state)
    record = state.device(device_code)
    assert record is not None
    assert record.pop("expires_at").isdigit()
    assert record == {
        "client_id": "cli",
        "scope": "openid",
        "user_code": user_code,
        "interval": "5",
        "status": "pending",
    }
    key = f"{state.prefix}device:{digest(device_code)}"
    assert 890 < state.client.ttl(key) <= 900  # expires_in + 300
    user_code_key = f"{state.prefix}user-code:{digest(normalise_user_code(user_code))}"
    assert state.client.get(user_code_key) == key
    assert 590 < state.client.ttl(user_code_key) <= 600
    assert state.device("unknown") is None
    assert state.take_device_grant(device_code) == ("pending", None)


def test_user_codes_are_read_however_they_are_typed(state):
    device_code, user_code = _device(state)
    found = state.device_by_user_code(user_code)
    assert found is not None and found == state.device(device_code)
    for typed in (
        user_code.lower(),
        user_code.replace("-", ""),
        f" {user_code[:4]} {user_code[5:]} ",
    ):
        assert state.device_by_user_code(typed) == found
    assert normalise_user_code(" bcdf-ghjk\t") == "BCDFGHJK"
    assert state.device_by_user_code("ZZZZ-ZZZZ") is None


def test_an_approved_device_code_yields_its_grant_once(state):
    device_code, user_code = _device(state)
    assert state.decide_device(user_code.lower(), True, GRANT)
    assert not state.decide_device(user_code, True, GRANT)
    assert not state.decide_device(user_code, False, {})
    assert state.device_by_user_code(user_code) is None
    assert state.device(device_code)["status"] == "approved"
    outcome, record = state.take_device_grant(device_code)
    assert outcome == "approved" and record is not None
    assert record["status"] == "consumed"
    assert {key: record[key] for key in GRANT} == {key: str(value) for key, value in GRANT.items()}
    assert record["client_id"] == "cli"
    assert state.take_device_grant(device_code) == ("unknown", None)
    assert state.device(device_code) is None


def test_racing_polls_take_an_approved_grant_once(state):
    device_code, user_code = _device(state)
    assert state.decide_device(user_code, True, GRANT)
    outcomes = [outcome for outcome, _ in _race(lambda: state.take_device_grant(device_code))]
    assert sorted(outcomes) == ["approved"] + ["unknown"] * (RACERS - 1)


def test_a_denied_device_code_stays_denied(state):
    device_code, user_code = _device(state)
    assert state.decide_device(user_code, False, GRANT)
    assert not state.decide_device(user_code, True, GRANT)
    assert state.take_device_grant(device_code) == ("denied", None)
    assert state.take_device_grant(device_code) == ("denied", None)
    record = state.device(device_code)
    assert record["status"] == "denied" and "username" not in record


def test_an_expired_device_code_cannot_be_approved(state):
    device_code, user_code = _device(state, expires_in=1)
    time.sleep(1.1)
    assert state.device_by_user_code(user_code) is None
    assert not state.decide_device(user_code, True, GRANT)
    # Still readable for a while, so authlib answers expired_token.
    record = state.device(device_code)
    assert record is not None and int(record["expires_at"]) <= time.time()
    assert state.take_device_grant(device_code) == ("pending", None)


def test_a_device_record_past_its_expiry_is_not_offered(state):
    """Even should its user code outlive it (clock skew between hosts)."""
    device_code, user_code = _device(state)
    key = f"{state.prefix}device:{digest(device_code)}"
    state.client.hset(key, "expires_at", int(time.time()) - 1)
    assert state.device_by_user_code(user_code) is None
    assert not state.decide_device(user_code, True, GRANT)
    assert state.device(device_code)["status"] == "pending"


def test_polling_too_fast_raises_the_interval_for_good(state):
    device_code, _ = _device(state, interval=1)
    assert not state.should_slow_down(device_code)
    assert state.should_slow_down(device_code)
    assert state.device(device_code)["interval"] == "6"
    # The old pace is now too fast too: the raised interval is kept.
    time.sleep(1.2)
    assert state.should_slow_down(device_code)
    assert state.device(device_code)["interval"] == "11"
    poll_key = f"{state.prefix}device-poll:{digest(device_code)}"
    assert 10_000 < state.client.pttl(poll_key) <= 11_000
    assert not state.should_slow_down("unknown")


def test_device_codes_are_checked_and_never_overwritten(state):
    device_code, user_code = _device(state)
    with pytest.raises(RuntimeError):  # the same user code would approve the wrong device
        state.save_device(secrets.token_urlsafe(32), user_code.lower(), {}, 600, 5)
    with pytest.raises(RuntimeError):
        state.save_device(device_code, "ZZZZ-YYYY", {}, 600, 5)
    assert state.device_by_user_code(user_code) == state.device(device_code)
    with pytest.raises(ValueError):
        state.save_device(secrets.token_urlsafe(32), "XXXX-XXXX", {"status": "approved"}, 600, 5)
    with pytest.raises(ValueError):
        state.decide_device(user_code, True, {"status": "pending"})
    assert state.device(device_code)["status"] == "pending"


# Redis down


CALLS: dict[str, Callable[[OidcState], Any]] = {
    "save_code": lambda s: s.save_code("c", {"family": "f"}),
    "take_code": lambda s: s.take_code("c"),
    "remember_nonce": lambda s: s.remember_nonce("cli", "n", 60),
    "nonce_used": lambda s: s.nonce_used("cli", "n"),
    "save_refresh": lambda s: s.save_refresh("t", _refresh_record("f"), int(time.time()) + 60),
    "rotate_refresh": lambda s: s.rotate_refresh("t", "cli"),
    "find_refresh": lambda s: s.find_refresh("t"),
    "revoke_family": lambda s: s.revoke_family("f", int(time.time()) + 60),
    "family_revoked": lambda s: s.family_revoked("f"),
    "create_session": lambda s: s.create_session({"username": "alice"}, 60),
    "session": lambda s: s.session("sid"),
    "add_session_family": lambda s: s.add_session_family("sid", "f"),
    "end_session": lambda s: s.end_session("sid"),
    "save_device": lambda s: s.save_device("d", "U", {}, 60, 5),
    "device": lambda s: s.device("d"),
    "device_by_user_code": lambda s: s.device_by_user_code("U"),
    "decide_device": lambda s: s.decide_device("U", True, {}),
    "take_device_grant": lambda s: s.take_device_grant("d"),
    "should_slow_down": lambda s: s.should_slow_down("d"),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_no_redis_is_store_unavailable(name: str, prefix: str):
    client = redis_client(f"redis://:x@127.0.0.1:{free_port()}/0")
    state = OidcState(client, prefix, RevocationStore(client, prefix))
    with pytest.raises(StoreUnavailable):
        CALLS[name](state)


def test_redis_stopping_under_a_running_store_is_store_unavailable(tmp_path: Path, prefix: str):
    server = RedisServer(tmp_path / "redis", secrets.token_hex(16))
    server.start()
    try:
        client = redis_client(server.url)
        state = OidcState(client, prefix, RevocationStore(client, prefix))
        code, token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        state.save_code(code, _code_record(_family()))
        state.save_refresh(token, _refresh_record(_family()), int(time.time()) + DAY)
        server.stop()
        with pytest.raises(StoreUnavailable):
            state.take_code(code)
        with pytest.raises(StoreUnavailable):
            state.rotate_refresh(token, "zhiva-viewer")
        server.start()  # same port, same append-only file: nothing was spent meanwhile
        assert state.take_code(code)[0] == "ok"
        assert state.rotate_refresh(token, "zhiva-viewer")[0] == "ok"
    finally:
        server.stop()
