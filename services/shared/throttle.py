"""Brute-force throttling in Redis, shared by every worker and surviving a worker restart.

Each failure counts against a key (a client address, a username). Failures
slow the next answers down; once `limit` failures fall within `window`
seconds, the key is refused (429) until the window has passed.
"""

from __future__ import annotations

import time

import redis

from .revocation import REDIS_ERRORS, StoreUnavailable

MAX_SLOWDOWN_SECONDS = 2.0


class Throttle:
    def __init__(
        self, client: redis.Redis, prefix: str, name: str, *, limit: int = 5, window: int = 900
    ) -> None:
        self.client = client
        self.prefix = f"{prefix}throttle:{name}:"
        self.limit = limit
        self.window = window

    def retry_after(self, *keys: str) -> int:
        """Seconds until the most limited of `keys` may try again; 0 when none is blocked."""
        try:
            wait = 0
            for key in keys:
                count = int(self.client.get(self.prefix + key) or 0)
                if count >= self.limit:
                    wait = max(wait, int(self.client.ttl(self.prefix + key)), 1)
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
        if failures > 0:
            time.sleep(min(MAX_SLOWDOWN_SECONDS, 0.25 * failures))

    def clear(self, *keys: str) -> None:
        try:
            self.client.delete(*(self.prefix + key for key in keys))
        except REDIS_ERRORS:
            raise StoreUnavailable() from None
