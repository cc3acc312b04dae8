"""Auth tokens for the viewer: the one place their extra claims are written.

The token service (admin page) and the login service (sign-in) both hand out
one-off auth tokens; the zhiva app reads `tokenServer`, `refreshServer` and
`pacs` from them to find this server (CONTRACT section 3), so both go through
`issue_auth_token` and the claims cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from .settings import Settings
from .tokens import Identity, TokenCodec, TokenKind

GENERATE_ACCESS_TOKEN_PATH = "/auth/generate-access-token"  # noqa: S105 - a URL path
REFRESH_TOKEN_PATH = "/auth/refresh-token"  # noqa: S105 - a URL path
PACS_PATH = "/zhiva/pacs"


def auth_token_claims(settings: Settings) -> dict[str, str]:
    """The server addresses an auth token carries, built from the public URL (never `Host`)."""
    base = settings.public_base_url
    return {
        "tokenServer": base + GENERATE_ACCESS_TOKEN_PATH,
        "refreshServer": base + REFRESH_TOKEN_PATH,
        "pacs": base + PACS_PATH,
    }


def issue_auth_token(
    codec: TokenCodec,
    settings: Settings,
    identity: Identity,
    *,
    audience: str | None = None,
    now: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """Sign a one-off auth token for `identity`, bound to `audience` (an origin) when given."""
    return codec.issue(
        TokenKind.AUTH, identity, audience=audience, extra=auth_token_claims(settings), now=now
    )
