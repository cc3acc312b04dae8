"""The OpenID Connect provider's state in Redis: codes, nonces, refresh families,
browser sessions and device codes (docs/OIDC.md).

Every change of more than one step is one Lua script, so concurrent requests
on any worker or host see it whole: a code or a refresh token works exactly
once. Keys are `<prefix>oidc:…` and name secrets (codes, tokens, session ids,
user codes) by their SHA-256 hex only, so reading Redis yields nothing to
present. Family revocations go through the revocation keys and stream of
`RevocationStore`, which the policy's `RevocationMirror` follows.

What comes back: authorization code records are the JSON that was saved (its
types kept); every other record is a Redis hash, so all of its values are
`str` (ints saved as their decimal text).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import redis

from services.stores.revocation import (
    REDIS_ERRORS,
    REVOKE_SCRIPT,
    RevocationStore,
    StoreUnavailable,
    revoked_key,
)

CODE_MAX_SECONDS = 60
# How long a used code still names its family, so a replay revokes what the first use got.
CODE_USED_SECONDS = 600
# A device record outlives its user code by this much, so a late poll reads
# `expired_token` instead of an unknown code (design, section 5).
DEVICE_GRACE_SECONDS = 300
SLOW_DOWN_STEP_SECONDS = 5

# Fields the store writes itself; a caller's record may not set them.
REFRESH_FIELDS = ("spent",)
DEVICE_FIELDS = ("user_code", "expires_at", "interval", "status")

_T = TypeVar("_T")

_TAKE_CODE = """
-- KEYS[1] code, KEYS[2] code-used marker; ARGV[1] marker TTL
local record = redis.call('GET', KEYS[1])
if not record then
  local family = redis.call('GET', KEYS[2])
  if family then return {'reused', family} end
  return {'unknown', ''}
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], cjson.decode(record)['family'], 'EX', ARGV[1])
return {'ok', record}
"""

# The hash and its expiry together; never over an existing record (that would
# reset `spent` or a device's status).
_SAVE_HASH = """
-- KEYS[1] hash; ARGV[1] 'ex' or 'exat', ARGV[2] its value, ARGV[3..] field, value, ...
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
if ARGV[1] == 'exat' then
  redis.call('EXPIREAT', KEYS[1], ARGV[2])
else
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 1
"""

# The revocation script's own text runs as the function `revoke(KEYS, ARGV)`:
# a reused refresh token revokes its family exactly as RevocationStore.revoke
# does (key and stream entry together), with no second copy of that logic.
_ROTATE_REFRESH = (
    "local function revoke(KEYS, ARGV)\n"
    + REVOKE_SCRIPT
    + """
end
-- KEYS[1] the token's record, KEYS[2] <prefix>revoked:fam:<family>, KEYS[3] the stream
-- ARGV[1] client_id, ARGV[2] family (read before), ARGV[3] seconds kept after the family
if redis.call('EXISTS', KEYS[2]) == 1 then return {'revoked'} end
local record = redis.call('HMGET', KEYS[1], 'family', 'client_id', 'spent')
if record[1] ~= ARGV[2] then return {'unknown'} end
if record[2] ~= ARGV[1] then return {'wrong_client'} end
if record[3] ~= '0' then
  -- The record lives as long as its family: the revocation outlives both the
  -- family and any access token issued up to its end.
  local now = tonumber(redis.call('TIME')[1])
  local expires_at = now + math.max(redis.call('TTL', KEYS[1]), 0) + tonumber(ARGV[3])
  revoke({KEYS[2], KEYS[3]},
         {'fam:' .. ARGV[2], expires_at - now + 1, expires_at, ARGV[3], ''})
  return {'reused'}
end
redis.call('HSET', KEYS[1], 'spent', '1')
return {'ok', redis.call('HGETALL', KEYS[1])}
"""
)

_ADD_SESSION_FAMILY = """
-- KEYS[1] session, KEYS[2] its families; ARGV[1] family
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then return 0 end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
"""

_END_SESSION = """
-- KEYS[1] session, KEYS[2] its families
local families = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
return families
"""

_SAVE_DEVICE = """
-- KEYS[1] device hash, KEYS[2] user-code key; ARGV[1] hash TTL, ARGV[2] user-code TTL,
-- ARGV[3..] field, value, ...
if redis.call('EXISTS', KEYS[1]) == 1 then return 'device_code' end
if not redis.call('SET', KEYS[2], KEYS[1], 'NX', 'EX', ARGV[2]) then return 'user_code' end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 'ok'
"""

_DECIDE_DEVICE = """
-- KEYS[1] user-code key, KEYS[2] device hash (read before); ARGV[1] status, ARGV[2..] grant
if redis.call('GET', KEYS[1]) ~= KEYS[2] then return 0 end
redis.call('DEL', KEYS[1])
local record = redis.call('HMGET', KEYS[2], 'status', 'expires_at')
local now = tonumber(redis.call('TIME')[1])
if record[1] ~= 'pending' or tonumber(record[2]) <= now then return 0 end
redis.call('HSET', KEYS[2], 'status', unpack(ARGV))
return 1
"""

_TAKE_DEVICE_GRANT = """
-- KEYS[1] device hash
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'approved' then
  redis.call('HSET', KEYS[1], 'status', 'consumed')
  return {'approved', redis.call('HGETALL', KEYS[1])}
end
if status == 'denied' or status == 'pending' then return {status} end
return {'unknown'}
"""

_SLOW_DOWN = """
-- KEYS[1] device hash, KEYS[2] poll marker; ARGV[1] seconds added per early poll
local interval = tonumber(redis.call('HGET', KEYS[1], 'interval'))
if not interval then return 0 end
if redis.call('SET', KEYS[2], '1', 'PX', interval * 1000, 'NX') then return 0 end
interval = interval + tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'interval', interval)
redis.call('SET', KEYS[2], '1', 'PX', interval * 1000)
return 1
"""


def digest(secret: str) -> str:
    """The SHA-256 hex that stands for a secret in key names."""
    return hashlib.sha256(secret.encode()).hexdigest()


def normalise_user_code(user_code: str) -> str:
    """A user code as typed or shown ('bcdf-ghjk ') to its one spelling ('BCDFGHJK')."""
    return re.sub(r"[\s-]", "", user_code).upper()


def _text(value: bytes | str) -> str:
    # The services' clients decode answers; a client that does not still reads the same.
    return value.decode() if isinstance(value, bytes) else value


def _record(fields: Mapping[Any, Any]) -> dict[str, Any]:
    return {_text(name): _text(value) for name, value in fields.items()}


def _pairs(flat: Iterable[Any]) -> dict[str, Any]:
    """A Lua HGETALL answer (field, value, field, value, ...) as a dict."""
    items = list(flat)
    return _record(dict(zip(items[0::2], items[1::2], strict=True)))


def _hash_fields(record: Mapping[str, Any], reserved: Iterable[str] = ()) -> list[str]:
    """A record's fields as HSET arguments. Only str and int values: anything else
    would come back as a string nobody parses the same way (True, None)."""
    args: list[str] = []
    for name, value in record.items():
        if name in reserved:
            raise ValueError(f"field {name!r} is written by the store itself")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise TypeError(f"field {name!r} must be str or int, not {type(value).__name__}")
        args += [name, str(value)]
    return args


class OidcState:
    def __init__(self, client: redis.Redis, prefix: str, revocations: RevocationStore) -> None:
        self.client = client
        self.prefix = prefix + "oidc:"
        self.revocations = revocations
        self._take_code = client.register_script(_TAKE_CODE)
        self._save_hash = client.register_script(_SAVE_HASH)
        self._rotate_refresh = client.register_script(_ROTATE_REFRESH)
        self._add_session_family = client.register_script(_ADD_SESSION_FAMILY)
        self._end_session = client.register_script(_END_SESSION)
        self._save_device = client.register_script(_SAVE_DEVICE)
        self._decide_device = client.register_script(_DECIDE_DEVICE)
        self._take_device_grant = client.register_script(_TAKE_DEVICE_GRANT)
        self._slow_down = client.register_script(_SLOW_DOWN)

    @staticmethod
    def _redis(call: Callable[[], _T]) -> _T:
        try:
            return call()
        except REDIS_ERRORS:
            raise StoreUnavailable() from None

    def _key(self, kind: str, secret: str) -> str:
        return f"{self.prefix}{kind}:{digest(secret)}"

    # Authorization codes

    def save_code(self, code: str, record: dict[str, Any], ttl: int = CODE_MAX_SECONDS) -> None:
        """Store a new code's JSON record for `ttl` (≤ 60) seconds; it must name its family."""
        if not 0 < ttl <= CODE_MAX_SECONDS:
            raise ValueError(f"a code lives 1 to {CODE_MAX_SECONDS} seconds, not {ttl}")
        if not isinstance(record.get("family"), str) or not record["family"]:
            raise ValueError("a code record needs its family")
        value = json.dumps(record)
        key = self._key("code", code)
        if not self._redis(lambda: self.client.set(key, value, ex=ttl, nx=True)):
            raise RuntimeError("authorization code already stored")

    def take_code(self, code: str) -> tuple[str, dict[str, Any] | None]:
        """("ok", record) once; then ("reused", {"family": …}) for 600 s; else ("unknown", None)."""
        keys = [self._key("code", code), self._key("code-used", code)]
        reply = self._redis(lambda: self._take_code(keys=keys, args=[CODE_USED_SECONDS]))
        outcome = _text(reply[0])
        if outcome == "ok":
            return "ok", json.loads(reply[1])
        if outcome == "reused":
            return "reused", {"family": _text(reply[1])}
        return "unknown", None

    def _nonce_key(self, client_id: str, nonce: str) -> str:
        return f"{self.prefix}nonce:{client_id}:{digest(nonce)}"

    def remember_nonce(self, client_id: str, nonce: str, ttl: int) -> None:
        key = self._nonce_key(client_id, nonce)
        self._redis(lambda: self.client.set(key, "1", ex=ttl, nx=True))

    def nonce_used(self, client_id: str, nonce: str) -> bool:
        # Read-only: authlib asks several times per authorization request.
        key = self._nonce_key(client_id, nonce)
        return bool(self._redis(lambda: self.client.exists(key)))

    # Refresh tokens

    def save_refresh(self, token: str, record: dict[str, Any], family_expires_at: int) -> None:
        """Store a new refresh token, unspent, until its family ends (absolute)."""
        if not record.get("family") or not record.get("client_id"):
            raise ValueError("a refresh record needs its family and client_id")
        args: list[str | int] = ["exat", int(family_expires_at)]
        args += _hash_fields(record, REFRESH_FIELDS)
        args += ["spent", "0"]
        key = self._key("rt", token)
        if not self._redis(lambda: self._save_hash(keys=[key], args=args)):
            raise RuntimeError("refresh token already stored")

    def rotate_refresh(self, token: str, client_id: str) -> tuple[str, dict[str, Any] | None]:
        """Spend a refresh token: ("ok", its record, now spent="1") for the first caller
        of its own client; ("revoked" | "unknown" | "wrong_client" | "reused", None) else.
        Spending a spent token revokes its whole family."""
        key = self._key("rt", token)
        # The family names a key the script touches, so it is read first; a record's
        # family never changes, and the script checks it again.
        stored = self._redis(lambda: self.client.hget(key, "family"))
        if stored is None:
            return "unknown", None
        family = _text(stored)
        revocations = self.revocations
        keys = [key, revoked_key(revocations.prefix, "fam:" + family), revocations.stream]
        args: list[str | int] = [client_id, family, revocations.keep_seconds]
        reply = self._redis(lambda: self._rotate_refresh(keys=keys, args=args))
        outcome = _text(reply[0])
        if outcome == "ok":
            return "ok", _pairs(reply[1])
        return outcome, None

    def find_refresh(self, token: str) -> dict[str, Any] | None:
        """The stored hash (spent "0" or "1"), or None; changes nothing."""
        key = self._key("rt", token)
        record = self._redis(lambda: self.client.hgetall(key))
        return _record(record) or None

    def revoke_family(self, family: str, expires_at: int) -> None:
        """Refuse every token of the family until `expires_at` (epoch s)."""
        self.revocations.revoke("fam:" + family, expires_at)

    def family_revoked(self, family: str) -> bool:
        return self.revocations.is_revoked("fam:" + family)

    # Provider browser sessions

    def _session_keys(self, session_id: str) -> list[str]:
        key = self._key("session", session_id)
        return [key, key + ":families"]

    def create_session(self, record: dict[str, Any], lifetime: int) -> str:
        """A new session id; the session ends `lifetime` seconds from now, used or not."""
        session_id = secrets.token_urlsafe(32)
        key = self._session_keys(session_id)[0]
        args: list[str | int] = ["ex", int(lifetime)]
        args += _hash_fields(record)
        if not self._redis(lambda: self._save_hash(keys=[key], args=args)):
            raise RuntimeError("session id already stored")
        return session_id

    def session(self, session_id: str) -> dict[str, Any] | None:
        key = self._session_keys(session_id)[0]
        record = self._redis(lambda: self.client.hgetall(key))
        return _record(record) or None

    def add_session_family(self, session_id: str, family: str) -> bool:
        """Note a family issued under the session, for logout to revoke. False when the
        session is gone (ended meanwhile): then nobody will revoke it for the session."""
        keys = self._session_keys(session_id)
        return bool(self._redis(lambda: self._add_session_family(keys=keys, args=[family])))

    def end_session(self, session_id: str) -> list[str]:
        """Delete the session; returns the families issued under it (for the caller to revoke)."""
        keys = self._session_keys(session_id)
        return [_text(family) for family in self._redis(lambda: self._end_session(keys=keys))]

    # Device authorization grant (RFC 8628)

    def _user_code_key(self, user_code: str) -> str:
        return self._key("user-code", normalise_user_code(user_code))

    def save_device(
        self,
        device_code: str,
        user_code: str,
        record: dict[str, Any],
        expires_in: int,
        interval: int,
    ) -> None:
        """Store a pending device code and its user code (kept as given, looked up normalised)."""
        fields = {
            "user_code": user_code,
            "expires_at": int(time.time()) + int(expires_in),
            "interval": int(interval),
            "status": "pending",
        }
        keys = [self._key("device", device_code), self._user_code_key(user_code)]
        args: list[str | int] = [int(expires_in) + DEVICE_GRACE_SECONDS, int(expires_in)]
        args += _hash_fields(record, DEVICE_FIELDS) + _hash_fields(fields)
        outcome = _text(self._redis(lambda: self._save_device(keys=keys, args=args)))
        if outcome != "ok":
            raise RuntimeError(f"{outcome} already stored")

    def device(self, device_code: str) -> dict[str, Any] | None:
        """The device hash, expired ones included (authlib answers `expired_token`);
        None once its grant was taken."""
        key = self._key("device", device_code)
        record = _record(self._redis(lambda: self.client.hgetall(key)))
        if not record or record.get("status") == "consumed":
            return None
        return record

    def device_by_user_code(self, user_code: str) -> dict[str, Any] | None:
        """The pending, unexpired device hash a user code names, for the verify page."""
        user_code_key = self._user_code_key(user_code)
        stored = self._redis(lambda: self.client.get(user_code_key))
        if stored is None:
            return None
        device_key = _text(stored)
        record = _record(self._redis(lambda: self.client.hgetall(device_key)))
        if record.get("status") != "pending" or int(record["expires_at"]) <= time.time():
            return None
        return record

    def decide_device(self, user_code: str, approved: bool, grant: dict[str, Any]) -> bool:
        """Approve (with the grant's fields) or deny a pending device code, once; the user
        code stops working either way. True when this call decided it."""
        user_code_key = self._user_code_key(user_code)
        stored = self._redis(lambda: self.client.get(user_code_key))
        if stored is None:
            return False
        if approved:
            args = ["approved", *_hash_fields(grant, DEVICE_FIELDS)]
        else:
            args = ["denied"]
        keys = [user_code_key, _text(stored)]
        return bool(self._redis(lambda: self._decide_device(keys=keys, args=args)))

    def take_device_grant(self, device_code: str) -> tuple[str, dict[str, Any] | None]:
        """("approved", the hash, now status="consumed") once; ("denied" | "pending", None);
        ("unknown", None) when consumed or missing."""
        key = self._key("device", device_code)
        reply = self._redis(lambda: self._take_device_grant(keys=[key]))
        outcome = _text(reply[0])
        if outcome == "approved":
            return "approved", _pairs(reply[1])
        return outcome, None

    def should_slow_down(self, device_code: str) -> bool:
        """True for a poll sooner than the interval; each such poll raises the interval
        by 5 s for good."""
        keys = [self._key("device", device_code), self._key("device-poll", device_code)]
        return bool(self._redis(lambda: self._slow_down(keys=keys, args=[SLOW_DOWN_STEP_SECONDS])))
