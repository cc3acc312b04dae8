"""Auth tokens for the viewer: the one place their extra claims are written.

The token service (admin page) and the login service (sign-in) both hand out
one-off auth tokens; the zhiva app reads `tokenServer`, `refreshServer` and
`pacs` from them to find this server (docs/PROTOCOLS.md), so both go through
`issue_auth_token` and the claims cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from services.access.paths import AUTH_PREFIX, DICOMWEB_PREFIX
from services.domain.tokens import TokenCodec, TokenKind
from services.domain.user import UserRecord
from services.settings import Settings

GENERATE_ACCESS_TOKEN_PATH = AUTH_PREFIX + "/generate-access-token"
REFRESH_TOKEN_PATH = AUTH_PREFIX + "/refresh-token"


def auth_token_claims(settings: Settings) -> dict[str, str]:
    """The server addresses an auth token carries, built from the public URL (never `Host`)."""
    base = settings.public_base_url
    return {
        "tokenServer": base + GENERATE_ACCESS_TOKEN_PATH,
        "refreshServer": base + REFRESH_TOKEN_PATH,
        "pacs": base + DICOMWEB_PREFIX,
    }


def issue_auth_token(
    codec: TokenCodec,
    settings: Settings,
    user: UserRecord,
    *,
    audience: str | None = None,
    now: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """Sign a one-off auth token for `user`, bound to `audience` (an origin) when given."""
    return codec.issue(
        TokenKind.AUTH, user, audience=audience, extra=auth_token_claims(settings), now=now
    )
