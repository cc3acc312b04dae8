"""Brute-force throttling in Redis, shared by every worker and surviving a worker restart.

Each failure counts against a key (a client address, a username and address
pair) for `window` seconds from the key's first failure. Callers slow their
answers down as failures grow (`slowdown_seconds`); a throttle with a `limit`
also refuses a key (429) once that many failures fall within its window.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time

import redis

from services.stores.revocation import REDIS_ERRORS, StoreUnavailable

SLOWDOWN_STEP_SECONDS = 0.25
MAX_SLOWDOWN_SECONDS = 2.0
# A client on IPv6 usually holds a whole /64; counting its addresses one by one
# would let it step around any per-address limit.
IPV6_PREFIX = 64


def slowdown_seconds(
    failures: int, step: float = SLOWDOWN_STEP_SECONDS, cap: float = MAX_SLOWDOWN_SECONDS
) -> float:
    """The delay after `failures` failures: `step` more per failure, never above `cap`."""
    return min(cap, step * failures) if failures > 0 else 0.0


def address_key(address: str | None) -> str:
    """The counter key of a client address: IPv4 as is, IPv6 by its /64.

    Anything else (it should not happen behind nginx) is hashed, so a strange
    value can neither make a long Redis key nor collide with a real address.
    """
    if not address:
        return "unknown"
    try:
        parsed = ipaddress.ip_address(address.strip())
    except ValueError:
        return "x-" + hashlib.sha256(address.encode(errors="replace")).hexdigest()[:32]
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed.packed, IPV6_PREFIX), strict=False))
    return str(parsed)


class Throttle:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        name: str,
        *,
        limit: int | None = 5,
        window: int = 900,
    ) -> None:
        self.client = client
        self.prefix = f"{prefix}throttle:{name}:"
        self.limit = limit
        self.window = window

    def count(self, key: str) -> int:
        """The failures counted against `key` in its current window."""
        try:
            return int(self.client.get(self.prefix + key) or 0)
        except REDIS_ERRORS:
            raise StoreUnavailable() from None

    def retry_after(self, *keys: str) -> int:
        """Seconds until the most limited of `keys` may try again; 0 when none is blocked."""
        if self.limit is None:
            return 0
        try:
            wait = 0
            for key in keys:
                count = int(self.client.get(self.prefix + key) or 0)
                if count >= self.limit:
                    # Rounded up: a client that waits what it is told must find the key gone.
                    left = -(-int(self.client.pttl(self.prefix + key)) // 1000)
                    wait = max(wait, left, 1)
            return wait
        except REDIS_ERRORS:
            raise StoreUnavailable() from None

    def failed(self, *keys: str) -> int:
        """Count one failure for each key; returns the highest count."""
        try:
            pipe = self.client.pipeline()
            for key in keys:
                pipe.incr(self.prefix + key)
                pipe.expire(self.prefix + key, self.window, nx=True)
            counts = pipe.execute()[0::2]
        except REDIS_ERRORS:
            raise StoreUnavailable() from None
        return max(counts, default=0)

    def slow_down(self, failures: int) -> None:
        """Delay an answer after failures, so guessing costs time even before the block."""
        delay = slowdown_seconds(failures)
        if delay:
            time.sleep(delay)

    def clear(self, *keys: str) -> None:
        try:
            self.client.delete(*(self.prefix + key for key in keys))
        except REDIS_ERRORS:
            raise StoreUnavailable() from None
