"""Token revocation in Redis: single use of auth tokens and revoked token ids.

Redis is shared by every gunicorn worker and every host, and its SET NX is
atomic, so "works exactly once" holds across all of them. Keys expire with the
token they describe: nothing needs cleaning up. Redis runs with an append-only
file, so a revocation survives a restart.
"""

from __future__ import annotations

import time

import redis

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class StoreUnavailable(RuntimeError):
    """Redis does not answer: callers grant nothing and answer 503."""

    def __init__(self) -> None:
        super().__init__("The token store is unavailable; try again in a moment")


def redis_client(url: str) -> redis.Redis:
    # Short timeouts: a request should fail closed quickly, not hang, when Redis is down.
    return redis.Redis.from_url(
        url,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        health_check_interval=10,
        decode_responses=True,
    )


class RevocationStore:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def _key(self, jti: str) -> str:
        return f"{self.prefix}revoked:{jti}"

    @staticmethod
    def _ttl(expires_at: int) -> int:
        return max(1, int(expires_at - time.time()) + 1)

    def redeem_once(self, jti: str, expires_at: int) -> bool:
        """Mark token `jti` used; True for the one caller that got there first."""
        try:
            return bool(self.client.set(self._key(jti), "1", nx=True, ex=self._ttl(expires_at)))
        except REDIS_ERRORS:
            raise StoreUnavailable() from None

    def revoke(self, jti: str, expires_at: int) -> None:
        try:
            self.client.set(self._key(jti), "1", ex=self._ttl(expires_at))
        except REDIS_ERRORS:
            raise StoreUnavailable() from None

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
