"""The revocation stream and the policy service's in-memory mirror of it, on a real Redis.

The mirror replaces one Redis call per new token on the policy's hot path, so
what it must keep is what that call gave: every revocation seen (those made
before it started too), within the 5 seconds a revocation may take (here: milliseconds),
and no answer at all, i.e. a deny, while Redis cannot be read.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.stores.revocation import (
    RevocationMirror,
    RevocationStore,
    StoreUnavailable,
    redis_client,
    revoked_key,
)
from tests.support.processes import wait_until
from tests.support.redis_server import RedisServer

DAY = 24 * 3600


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex}:"


@pytest.fixture
def store(redis_server: RedisServer, prefix: str) -> RevocationStore:
    return RevocationStore(redis_client(redis_server.url), prefix)


@pytest.fixture
def mirror(redis_server: RedisServer, prefix: str) -> Iterator[RevocationMirror]:
    mirror = RevocationMirror(redis_server.url, prefix)
    yield mirror
    mirror.stop()


def _jti() -> str:
    return uuid.uuid4().hex


def test_a_revocation_reaches_a_running_mirror_within_milliseconds(store, mirror):
    assert mirror.wait_synced(5)
    jti = _jti()
    assert not mirror.is_revoked(jti)
    started = time.monotonic()
    store.revoke(jti, int(time.time()) + DAY)
    wait_until(lambda: mirror.is_revoked(jti), 2, "revocation mirrored", interval=0.001)
    # XREAD returns as soon as the entry is added: far below the 2 s lag it is allowed.
    assert time.monotonic() - started < 0.5


def test_revocations_made_before_the_mirror_started_are_held(store, mirror):
    earlier = [_jti() for _ in range(2500)]  # more than one XREAD batch
    for jti in earlier:
        store.revoke(jti, int(time.time()) + DAY)
    assert mirror.wait_synced(5)
    assert all(mirror.is_revoked(jti) for jti in earlier)
    assert not mirror.is_revoked(_jti())


def test_keys_written_without_the_stream_are_held(store, mirror):
    """An auth token redeemed by a token service from before the stream (an upgrade):
    only its key exists, and it must stay refused."""
    jti, forever = _jti(), _jti()
    store.client.set(revoked_key(store.prefix, jti), "1", ex=3600)
    store.client.set(revoked_key(store.prefix, forever), "1")
    assert store.client.xlen(store.stream) == 0
    assert mirror.wait_synced(5)
    assert mirror.is_revoked(jti) and mirror.is_revoked(forever)
    assert not mirror.is_revoked(_jti())


def test_redeem_once_announces_only_the_first_redemption(store, mirror):
    jti = _jti()
    expires = int(time.time()) + DAY
    assert store.redeem_once(jti, expires)
    assert not store.redeem_once(jti, expires)
    assert store.client.xlen(store.stream) == 1
    assert store.is_revoked(jti)
    assert mirror.wait_synced(5)
    assert mirror.is_revoked(jti)


def test_the_stream_keeps_entries_only_as_long_as_a_token_can_live(redis_server, prefix):
    short = RevocationStore(redis_client(redis_server.url), prefix, keep_seconds=1)
    short.revoke(_jti(), int(time.time()) + 1)
    time.sleep(1.1)
    short.revoke(_jti(), int(time.time()) + 1)
    # Trimmed by Redis's clock in the same script: nothing grows without bound.
    assert short.client.xlen(short.stream) == 1


def test_expired_tokens_are_not_held(store, mirror):
    expired = _jti()
    store.revoke(expired, int(time.time()) - 5)  # its key lives 1 s; the token is dead anyway
    time.sleep(1.2)  # the key is gone; the stream entry stays until trimmed
    assert store.client.xlen(store.stream) == 1
    assert mirror.wait_synced(5)
    assert expired not in mirror._revoked


def test_an_unreadable_stream_denies_then_recovers(tmp_path: Path, prefix: str):
    server = RedisServer(tmp_path / "redis", secrets.token_hex(16))
    server.start()
    mirror = RevocationMirror(server.url, prefix, max_lag=0.5)
    try:
        assert mirror.wait_synced(5)
        assert mirror.ping()
        server.stop()
        # No answer rather than a stale one: the caller denies (fail closed).
        wait_until(lambda: not mirror.ping(), 5, "mirror refusing while Redis is down")
        with pytest.raises(StoreUnavailable):
            mirror.is_revoked(_jti())
        server.start()  # same port, same append-only file
        wait_until(mirror.ping, 10, "mirror answering again")
        jti = _jti()
        RevocationStore(redis_client(server.url), prefix).revoke(jti, int(time.time()) + DAY)
        wait_until(lambda: mirror.is_revoked(jti), 2, "revocation after the outage")
    finally:
        mirror.stop()
        server.stop()


def test_a_mirror_behind_asks_redis_itself(store, redis_server, prefix):
    """Past the lag allowed (the process paused by a long collection, the thread starved)
    the answer comes from Redis itself: neither a stale set nor a deny while Redis answers."""
    behind = [0.0]

    def clock() -> float:  # readers see the thread's last read `behind` seconds later
        thread = threading.current_thread().name == "revocation-mirror"
        return time.monotonic() + (0.0 if thread else behind[0])

    mirror = RevocationMirror(redis_server.url, prefix, clock=clock)
    try:
        assert mirror.wait_synced(5)
        # A key without its stream entry: Redis holds it, the mirror never will.
        jti = _jti()
        store.client.set(revoked_key(prefix, jti), "1", ex=3600)
        assert not mirror.is_revoked(jti)  # in time: the mirror's own set answers
        behind[0] = 10.0
        assert not mirror.ping()
        assert mirror.is_revoked(jti)
        assert not mirror.is_revoked(_jti())
    finally:
        mirror.stop()


def test_a_mirror_behind_denies_when_redis_does_not_answer(tmp_path: Path, prefix: str):
    server = RedisServer(tmp_path / "redis", secrets.token_hex(16))
    server.start()
    behind = [0.0]
    mirror = RevocationMirror(server.url, prefix, clock=lambda: time.monotonic() + behind[0])
    try:
        assert mirror.wait_synced(5)
        server.stop()
        behind[0] = 10.0
        for _ in range(3):  # the first asks Redis and fails; the others know it is down
            with pytest.raises(StoreUnavailable):
                mirror.is_revoked(_jti())
    finally:
        mirror.stop()
        server.stop()


def test_a_mirror_that_never_read_denies(prefix: str):
    dead = RevocationMirror("redis://:x@127.0.0.1:1/0", prefix, max_lag=0.3)
    try:
        with pytest.raises(StoreUnavailable):
            dead.is_revoked(_jti())
        assert not dead.ping()
    finally:
        dead.stop()


def test_a_forked_worker_follows_on_its_own(store, mirror):
    """gunicorn builds the app in its master and forks: the child must not trust the
    parent's thread (gone in the child) nor its copy of the set."""
    assert mirror.wait_synced(5)
    before_fork = _jti()
    store.revoke(before_fork, int(time.time()) + DAY)
    after_fork = _jti()
    pid = os.fork()
    if pid == 0:  # the child: answers through its exit code, never returns into pytest
        code = 1
        try:
            seen_before = mirror.is_revoked(before_fork)
            deadline = time.monotonic() + 5
            while not mirror.is_revoked(after_fork) and time.monotonic() < deadline:
                time.sleep(0.01)
            code = 0 if seen_before and mirror.is_revoked(after_fork) else 2
        finally:
            os._exit(code)
    time.sleep(0.5)  # the child has started its own follower by now, or is starting it
    store.revoke(after_fork, int(time.time()) + DAY)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
