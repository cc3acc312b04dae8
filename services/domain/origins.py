"""Origin matching: exact scheme, host and port, with `*` wildcards as the seed allowed.

A pattern is `scheme://host[:port]`. In the host, `*` stands for one or more
whole DNS labels (`https://*.mydomain.com` matches `https://a.mydomain.com`
and `https://a.b.mydomain.com`, never `https://mydomain.com` or
`https://evilmydomain.com`). A port of `*` matches any port; no port means the
scheme's default port.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"https": 443, "http": 80}
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"^(?:{_LABEL}\.)*{_LABEL}$|^\d{{1,3}}(?:\.\d{{1,3}}){{3}}$")


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        default = DEFAULT_PORTS.get(self.scheme)
        return f"{self.scheme}://{self.host}" + ("" if self.port == default else f":{self.port}")


def parse_origin(value: str | None) -> Origin | None:
    """The origin of an absolute http(s) URL, or None for anything else.

    Refuses user-info (`https://allowed@evil`), backslashes, control
    characters and hosts that are not plain DNS names or IPv4 addresses.
    """
    if not value or not isinstance(value, str) or len(value) > 2048:
        return None
    if any(ch in value for ch in "\\\t\r\n\x00 ") or not value.isprintable():
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.netloc or "@" in parts.netloc:
        return None
    host = (parts.hostname or "").lower()
    if not _HOST_RE.match(host):
        return None
    return Origin(scheme, host, port if port is not None else DEFAULT_PORTS[scheme])


class OriginPolicy:
    """The allowed origins; `allows()` is the one check every service uses."""

    def __init__(self, patterns: tuple[str, ...] | list[str]):
        self.patterns = tuple(patterns)
        self._compiled = [self._compile(p) for p in self.patterns]

    @staticmethod
    def _compile(pattern: str) -> re.Pattern[str]:
        return re.compile(origin_regex(pattern), re.IGNORECASE)

    def allows(self, origin: str | Origin | None) -> bool:
        parsed = origin if isinstance(origin, Origin) else parse_origin(origin)
        if parsed is None:
            return False
        return any(rx.fullmatch(str(parsed)) for rx in self._compiled)


def origin_regex(pattern: str) -> str:
    """A regular expression (Python and PCRE alike) for the `Origin` header values of `pattern`.

    nginx's CORS map and `OriginPolicy.allows` both use it, so they agree.
    """
    match = re.fullmatch(r"(https?)://([a-z0-9*.-]+)(?::(\d+|\*))?/?", pattern.strip().lower())
    if not match:
        raise ValueError(f"not an origin pattern: {pattern!r} (expected scheme://host[:port])")
    scheme, host, port = match.groups()
    host_re = r"\.".join(
        rf"{_LABEL}(?:\.{_LABEL})*" if label == "*" else re.escape(label)
        for label in host.split(".")
    )
    if port == "*":
        port_re = r"(?::\d{1,5})?"
    elif port is None or int(port) == DEFAULT_PORTS[scheme]:
        port_re = f"(?::{DEFAULT_PORTS[scheme]})?"
    else:
        port_re = f":{int(port)}"
    return f"^{scheme}://{host_re}{port_re}$"
