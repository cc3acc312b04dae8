"""Token revocation in Redis: single use of auth tokens and revoked token ids.

Redis is shared by every gunicorn worker and every host, and its SET NX is
atomic, so "works exactly once" holds across all of them. Keys expire with the
token they describe: nothing needs cleaning up. Redis runs with an append-only
file, so a revocation survives a restart.

Every revocation is also announced on a stream (`<prefix>revocations`), in the
same server-side script as its key, so the two never disagree. The policy
service, which asks about the token of every request that reaches Orthanc,
follows that stream (`RevocationMirror`) and answers from memory instead of
one Redis round trip per new token, the costliest step of a decision
otherwise (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis

log = logging.getLogger("zhiva.revocation")

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
STREAM = "revocations"
# How long a stream entry is kept: the longest a revoked token could still be
# presented (the services pass their longest token lifetime).
DEFAULT_KEEP_SECONDS = 31 * 24 * 3600

# KEYS: the token's key, the stream. ARGV: jti, key TTL, token expiry (epoch s),
# seconds to keep stream entries, "nx" for single use. The stream's IDs are
# Redis's own milliseconds, so entries older than the longest token lifetime
# are trimmed by Redis's clock (exact MINID: a short stream is trimmed too).
# The OIDC store runs this very text as a Lua function body inside its own
# scripts (oidc_state.py), so it must keep reading only KEYS and ARGV.
REVOKE_SCRIPT = """
local stored
if ARGV[5] == 'nx' then
  stored = redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2])
else
  stored = redis.call('SET', KEYS[1], '1', 'EX', ARGV[2])
end
if not stored then
  return 0
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local oldest = string.format('%.0f', now_ms - tonumber(ARGV[4]) * 1000)
redis.call('XADD', KEYS[2], 'MINID', oldest, '*', 'jti', ARGV[1], 'exp', ARGV[3])
return 1
"""


def revoked_key(prefix: str, jti: str) -> str:
    return f"{prefix}revoked:{jti}"


class StoreUnavailable(RuntimeError):
    """Redis does not answer: callers grant nothing and answer 503."""

    def __init__(self) -> None:
        super().__init__("The token store is unavailable; try again in a moment")


def redis_client(url: str, *, timeout: float = 1.0) -> redis.Redis:
    # Short timeouts: a request should fail closed quickly, not hang, when Redis is down.
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=1.0,
        health_check_interval=10,
        decode_responses=True,
    )


class RevocationStore:
    def __init__(
        self, client: redis.Redis, prefix: str, *, keep_seconds: int = DEFAULT_KEEP_SECONDS
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.stream = prefix + STREAM
        self.keep_seconds = keep_seconds
        self._script = client.register_script(REVOKE_SCRIPT)

    def _key(self, jti: str) -> str:
        return revoked_key(self.prefix, jti)

    @staticmethod
    def _ttl(expires_at: int) -> int:
        return max(1, int(expires_at - time.time()) + 1)

    def _revoke(self, jti: str, expires_at: int, *, once: bool) -> bool:
        mode = "nx" if once else ""
        args: list[str | int] = [
            jti,
            self._ttl(expires_at),
            int(expires_at),
            self.keep_seconds,
            mode,
        ]
        try:
            return bool(self._script(keys=[self._key(jti), self.stream], args=args))
        except REDIS_ERRORS:
            raise StoreUnavailable() from None

    def redeem_once(self, jti: str, expires_at: int) -> bool:
        """Mark token `jti` used; True for the one caller that got there first."""
        return self._revoke(jti, expires_at, once=True)

    def revoke(self, jti: str, expires_at: int) -> None:
        self._revoke(jti, expires_at, once=False)

    def is_revoked(self, jti: str) -> bool:
        try:
            return bool(self.client.exists(self._key(jti)))
        except REDIS_ERRORS:
            raise StoreUnavailable() from None

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except REDIS_ERRORS:
            return False


FOLLOW_BATCH = 1000
RETRY_SECONDS = 0.5
# Past this without a completed read, the mirror refuses to answer (fail closed).
# With nginx's 2 s grant cache on top (which counts whole seconds: up to 3), a
# revocation bites within the promised 5 s even when Redis answers slowly
# (docs/ARCHITECTURE.md).
MAX_LAG_SECONDS = 2.0
# A mirror that is behind asks Redis directly, on the policy's event loop: a short wait.
DIRECT_TIMEOUT_SECONDS = 0.25
PRUNE_EVERY_SECONDS = 60.0


class RevocationMirror:
    """Every revoked token id that is not yet expired, held in this process.

    A thread follows the stream RevocationStore writes: first the revocation
    keys themselves and every entry the stream holds, then, blocked in XREAD,
    each new entry as it comes (milliseconds after the revocation).
    `is_revoked` answers from memory while the thread's last completed read
    started less than MAX_LAG_SECONDS ago. Past that the mirror is behind
    (the process paused, the thread starved, a slow reply), and it asks Redis
    itself for that one token, as RevocationStore does; when that fails too,
    or the thread already knows Redis is down, it raises StoreUnavailable, so
    the caller denies. A known outage costs no wait per request.
    The thread starts on first use in each process: a gunicorn master that
    forks workers never runs one, and each worker runs its own.
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        max_lag: float = MAX_LAG_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.stream = prefix + STREAM
        self.key_pattern = revoked_key(prefix, "*")
        self.max_lag = max_lag
        # XREAD blocks this long when nothing new comes (a new entry ends the wait at
        # once): a quarter of the lag allowed, so an idle mirror is never taken for stale.
        self.block_ms = max(1, int(max_lag * 1000 / 4))
        self.clock = clock
        self._revoked: dict[str, int] = {}  # jti -> expiry (epoch seconds)
        self._synced_at: float | None = None
        # Set when a read failed (the thread's or a direct one), cleared by the thread's
        # next completed read: while set, a mirror that is behind denies at once.
        self._redis_down = False
        self._direct: RevocationStore | None = None
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._owner_pid: int | None = None
        self._start_lock = threading.Lock()

    def start(self) -> None:
        """Start following in this process (again after a fork); returns at once."""
        with self._start_lock:
            if self._owner_pid == os.getpid():
                return
            # After a fork the parent's thread is gone and its state is the parent's.
            self._owner_pid = os.getpid()
            self._revoked, self._synced_at = {}, None
            self._redis_down, self._direct = False, None
            self._synced, self._stopping = threading.Event(), threading.Event()
            threading.Thread(target=self._follow, name="revocation-mirror", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        direct, self._direct = self._direct, None
        if direct is not None:
            direct.client.close()

    def wait_synced(self, timeout: float) -> bool:
        self.start()
        return self._synced.wait(timeout)

    def is_revoked(self, jti: str) -> bool:
        if self.ping():
            return jti in self._revoked
        if self._redis_down:
            raise StoreUnavailable()
        try:
            return self._direct_store().is_revoked(jti)
        except StoreUnavailable:
            self._redis_down = True
            raise

    def _direct_store(self) -> RevocationStore:
        if self._direct is None:  # built on first need, in the process that needs it
            client = redis_client(self.url, timeout=DIRECT_TIMEOUT_SECONDS)
            self._direct = RevocationStore(client, self.prefix)
        return self._direct

    def ping(self) -> bool:
        """True when the stream was read within MAX_LAG_SECONDS (also the health check)."""
        if self._owner_pid != os.getpid():
            self.wait_synced(self.max_lag)
        synced_at = self._synced_at
        return synced_at is not None and self.clock() - synced_at <= self.max_lag

    def _follow(self) -> None:
        stopping, synced = self._stopping, self._synced
        client: redis.Redis | None = None
        last_id, down, pruned_at = "0-0", False, self.clock()
        while not stopping.is_set():
            try:
                if client is None:
                    client = redis_client(self.url, timeout=self.block_ms / 1000 + 1.0)
                    if last_id == "0-0":
                        self._load_keys(client)
                started = self.clock()
                entries = _stream_entries(
                    client.xread({self.stream: last_id}, count=FOLLOW_BATCH, block=self.block_ms)
                )
                for entry_id, fields in entries:
                    self._add(fields)
                    last_id = entry_id
                self._redis_down = False
                if len(entries) < FOLLOW_BATCH:
                    # Everything announced before `started` is now held.
                    self._synced_at = started
                    synced.set()
                if down:
                    log.info("revocation stream readable again")
                    down = False
                if started - pruned_at > PRUNE_EVERY_SECONDS:
                    self._prune()
                    pruned_at = started
            except Exception as error:  # noqa: BLE001 - never let the thread die; fail closed
                self._redis_down = True
                if not down:
                    log.error("revocation stream unreadable (%s); denying until it is back", error)
                    down = True
                if client is not None:
                    client.close()
                    client = None
                stopping.wait(RETRY_SECONDS)

    def _load_keys(self, client: redis.Redis) -> None:
        """The revocation keys themselves, once before the stream: a version of the token
        service before the stream (an upgrade, with auth tokens redeemed the day before)
        wrote keys alone, and those tokens must stay refused."""
        now = int(time.time())
        cut = len(self.key_pattern) - 1
        for keys in _batches(client.scan_iter(match=self.key_pattern, count=1000), 1000):
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.ttl(key)
            for key, ttl in zip(keys, pipe.execute(), strict=True):
                if ttl == -1:  # no expiry: held as long as any token could live
                    ttl = DEFAULT_KEEP_SECONDS
                if ttl > 0:
                    self._revoked[key[cut:]] = now + ttl

    def _add(self, fields: dict[str, str]) -> None:
        jti, expires = fields.get("jti"), fields.get("exp", "")
        if jti and expires.isdigit() and int(expires) > time.time():
            self._revoked[jti] = int(expires)

    def _prune(self) -> None:
        # Only this thread writes the dict; readers see it before or after each pop.
        now = time.time()
        for jti in [jti for jti, expires in self._revoked.items() if expires <= now]:
            self._revoked.pop(jti, None)


def _stream_entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """The entries of XREAD's answer for one stream, from a client that decodes responses
    (redis-py types the answer for every protocol version at once)."""
    if not reply:
        return []
    return [(str(entry_id), dict(fields)) for entry_id, fields in reply[0][1]]


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
