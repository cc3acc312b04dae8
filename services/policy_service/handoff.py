"""nginx's word to Orthanc's plugin that a request was already decided (issue 6).

nginx asks the policy service (auth_request) before it proxies a `/zhiva/`
request, then adds the header `X-Zhiva-Decided: <value>`; the plugin in
Orthanc lets a request carrying exactly this value through without asking
again. The value is derived from `.env`'s SECRET_KEY, so nobody without that
file can make it, and nginx replaces any copy a client sends.

Plain standard library on purpose: the Orthanc plugin (Debian's Python, not
the project's virtualenv) loads this file by path, like permissions.py.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

HEADER = "X-Zhiva-Decided"
_LABEL = b"zhiva nginx-decided v1"


def decided_value(secret_key: str) -> str:
    """The header value for this SECRET_KEY (hex, so nginx.conf needs no quoting)."""
    if not secret_key:
        raise ValueError("SECRET_KEY is empty")
    return hmac.new(secret_key.encode(), _LABEL, hashlib.sha256).hexdigest()


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


def is_decided(header_value: str | None, expected: str | None) -> bool:
    """Constant-time: does the request carry nginx's value? Never true without one."""
    if not expected or not header_value:
        return False
    return hmac.compare_digest(header_value.encode("utf-8", "replace"), expected.encode())
