"""nginx's word to Orthanc's plugin that one request, exactly as Orthanc will run it, was decided.

nginx asks the policy service (auth_request) before it proxies a `/zhiva/`
request. A grant carries `X-Zhiva-Decided: <value>`, which nginx passes on to
Orthanc; the plugin in Orthanc lets a request through without asking again
only when the value binds what Orthanc itself is about to run: the method
(after any override Orthanc honours), the path as Orthanc reads it, and the
token it finds. Whatever differs, the plugin decides on its own. The key is
derived from `.env`'s SECRET_KEY, so nobody without that file can make a
value, and nginx replaces any copy a client sends.

A plain read (permissions.SHARED_READ_PATH) is bound to its class instead of
its path: nginx reuses one grant for all of a token's plain reads, and so
its value too.

Standard library only (services/access/__init__.py says why).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

HEADER = "X-Zhiva-Decided"
_LABEL = b"zhiva nginx-decided v2"


def handoff_key(secret_key: str) -> bytes:
    """The key of the values for this SECRET_KEY (never the secret itself)."""
    if not secret_key:
        raise ValueError("SECRET_KEY is empty")
    return hmac.new(secret_key.encode(), _LABEL, hashlib.sha256).digest()


def bound_value(key: bytes, method: str, scope: str, token: str | None) -> str:
    """The header value for one decided request (hex: nginx passes it on unquoted).

    `scope` is the path as Orthanc reads it, or the plain-read class; the token
    enters as its digest, so a token of any length costs one hash.
    """
    token_digest = hashlib.sha256((token or "").encode("utf-8", "surrogatepass")).digest()
    message = b"%s\n%s\n" % (
        method.encode("ascii", "replace"),
        scope.encode("utf-8", "surrogatepass"),
    )
    return hmac.new(key, message + token_digest, hashlib.sha256).hexdigest()


def matches(value: str | None, expected: str) -> bool:
    """Constant time: does the request carry exactly this value?"""
    if not value:
        return False
    return hmac.compare_digest(value.encode("utf-8", "replace"), expected.encode())


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer …` value, or None."""
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


def token_of(
    header_token: str | None, authorization: str | None, query_token: str | None
) -> str | None:
    """The token a request carries, in the one order both doors read it: the `token` header,
    then `Authorization: Bearer`, then the `token` argument (GET only: the caller says)."""
    if header_token and header_token.strip():
        return header_token.strip()
    if (token := bearer(authorization)) is not None:
        return token
    if query_token and query_token.strip():
        return query_token.strip()
    return None


def secret_key_from(config_dir: str | os.PathLike[str] | None) -> str | None:
    """SECRET_KEY from the environment, else from CONFIG_DIR/.env; None when absent."""
    value = os.environ.get("SECRET_KEY")
    if value:
        return value
    if not config_dir:
        return None
    try:
        lines = (Path(config_dir) / ".env").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        name, sep, raw = line.strip().partition("=")
        if sep and name.strip() == "SECRET_KEY":
            raw = raw.strip()
            if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
                raw = raw[1:-1]
            return raw or None
    return None
