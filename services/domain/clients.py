"""OpenID Connect clients: the record every service reads, and the rules for registering one.

A client is stored in the `oauth_clients` table (services/stores/models.py), written
through SQLAlchemy by the admin CLI and `make up` (services/stores/oauth_clients.py)
and read through the bare driver by the services (services/stores/clients.py). Both
sides build the record here, from the same JSON columns, so they agree on it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import urlsplit

from services.domain.origins import OriginPolicy, parse_origin

# Registered by `make up` for the local viewer (docs/OIDC.md, Clients).
VIEWER_CLIENT_ID = "zhiva-viewer"

MAX_URI_LENGTH = 2048
_CLIENT_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Printable ASCII without the space and the characters HTML or a log line would have to
# escape: a redirect URI goes into a Location header and into the error pages.
_URI_CHARACTERS = frozenset(chr(code) for code in range(0x21, 0x7F)) - set('"\\<>')


class ClientError(ValueError):
    """A refused client or redirect URI; the message is safe to show."""


@dataclass(frozen=True, slots=True)
class ClientRecord:
    client_id: str
    secret_hash: str | None  # SHA-256 hex of the secret; None: a public client
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]
    # When this registration was made (epoch seconds): tokens older than it were issued to
    # a removed client of the same id, and are refused.
    registered_at: float = field(default=0.0, compare=False)

    @property
    def is_public(self) -> bool:
        return self.secret_hash is None

    @property
    def origins(self) -> frozenset[str]:
        """The origins of the redirect URIs: the only ones its tokens are good for."""
        parsed = (parse_origin(uri) for uri in self.redirect_uris)
        return frozenset(str(origin) for origin in parsed if origin is not None)

    def check_secret(self, secret: str) -> bool:
        """True when `secret` is this confidential client's secret (never for a public one)."""
        if self.secret_hash is None or not isinstance(secret, str):
            return False
        return hmac.compare_digest(hash_secret(secret), self.secret_hash)


def client_refusal(client: ClientRecord | None, issued_at: float, origin: str | None) -> str | None:
    """Why an OIDC access token of `client` (issued at `issued_at`) may not be used from
    `origin`, or None: the client must still be registered, and have been when the token was
    issued (a removed client's id may be registered again), and a browser's Origin must be
    one of its redirect URIs' (no Origin: no browser, judged without it)."""
    if client is None:
        return "client removed"
    if issued_at < int(client.registered_at):
        return "client removed (registered again since)"
    if origin:
        parsed = parse_origin(origin)
        if parsed is None or str(parsed) not in client.origins:
            return "invalid token: bound to another origin"
    return None


def hash_secret(secret: str) -> str:
    """SHA-256 hex: the secret is 256 random bits, so a slow hash would add nothing but
    the cost of every token request (docs/OIDC.md, Clients)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def valid_client_id(client_id: object) -> bool:
    return isinstance(client_id, str) and _CLIENT_ID_RE.fullmatch(client_id) is not None


def check_client_uri(uri: str, policy: OriginPolicy) -> str:
    """`uri` when it may be registered as a redirect (or post-logout redirect) URI.

    An `https://` URL of an origin `policy` allows, so nginx's CORS map for `/zhiva/`
    already covers the client with no re-render; no fragment (RFC 6749, 3.1.2), no
    user-info. Raises ClientError saying what is wrong.
    """
    if not isinstance(uri, str):
        raise ClientError("a redirect URI must be a string")
    if len(uri) > MAX_URI_LENGTH:
        raise ClientError(f"redirect URI longer than {MAX_URI_LENGTH} characters")
    if not uri or not set(uri) <= _URI_CHARACTERS:
        raise ClientError(
            f"redirect URI {uri!r}: only printable ASCII without spaces, quotes, "
            "backslashes, < or > (percent-encode the rest)"
        )
    if not uri.startswith("https://"):
        raise ClientError(f"redirect URI {uri!r} does not start with https://")
    if "#" in uri:
        raise ClientError(f"redirect URI {uri!r} has a fragment (#)")
    try:
        netloc = urlsplit(uri).netloc
    except ValueError:
        netloc = ""
    if "@" in netloc:
        raise ClientError(f"redirect URI {uri!r} has user information (@) in it")
    origin = parse_origin(uri)
    if origin is None:
        raise ClientError(f"redirect URI {uri!r} is not an https URL of a DNS name or IPv4 address")
    if not policy.allows(origin):
        raise ClientError(
            f"the origin {origin} of redirect URI {uri!r} is not allowed: "
            "add it to ALLOWED_ORIGINS in .env and run `make up` first"
        )
    return uri


def uris_json(uris: tuple[str, ...] | list[str]) -> str:
    """How a list of URIs is stored (a JSON list in a text column)."""
    return json.dumps(list(uris), separators=(",", ":"))


def _uris_of(stored: object) -> tuple[str, ...]:
    value = json.loads(stored) if isinstance(stored, str) else None
    if not isinstance(value, list) or not all(isinstance(uri, str) for uri in value):
        raise ValueError("not a JSON list of strings")
    return tuple(value)


def _epoch(stored: object) -> float:
    """Epoch seconds of a stored timestamp: a datetime (psycopg) or ISO text (SQLite),
    UTC when it names no zone."""
    moment = datetime.fromisoformat(stored) if isinstance(stored, str) else stored
    if not isinstance(moment, datetime):
        raise ValueError("created_at is not a timestamp")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def record_of(
    client_id: object,
    secret_hash: object,
    redirect_uris: object,
    post_logout: object,
    created_at: object,
) -> ClientRecord:
    """The record of a stored row; ValueError when the row is not one this code wrote."""
    if not isinstance(client_id, str) or not (secret_hash is None or isinstance(secret_hash, str)):
        raise ValueError("client_id or secret_hash is not text")
    return ClientRecord(
        client_id,
        secret_hash,
        _uris_of(redirect_uris),
        _uris_of(post_logout),
        _epoch(created_at),
    )


class _PublicURL(Protocol):
    # services/settings.py's Settings; only this is needed, so the domain imports no settings.
    @property
    def public_base_url(self) -> str: ...


def viewer_uris(settings: _PublicURL) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The local viewer's redirect and post-logout redirect URIs, from the public URL."""
    base = settings.public_base_url
    return (base + "/viewer/callback",), (base + "/viewer/",)
