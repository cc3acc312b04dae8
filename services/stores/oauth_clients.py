"""OpenID Connect clients written: the one place that registers, lists and removes them.

The admin CLI (`zhiva-admin clients …`) and `make up` (infra/stack.py, for the
local viewer) go through these functions; the services only read clients, through
the driver (services/stores/clients.py). The rules for a client id and a redirect
URI are services/domain/clients.py's.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.domain.clients import (
    VIEWER_CLIENT_ID,
    ClientError,
    ClientRecord,
    check_client_uri,
    hash_secret,
    record_of,
    uris_json,
    valid_client_id,
    viewer_uris,
)
from services.domain.origins import OriginPolicy
from services.settings import Settings
from services.stores.models import OAuthClient

log = logging.getLogger("zhiva")


def _find(session: Session, client_id: str) -> OAuthClient | None:
    return session.scalar(select(OAuthClient).where(OAuthClient.client_id == client_id))


def _checked(uris: Iterable[str], policy: OriginPolicy) -> tuple[str, ...]:
    # Each URI once, in the order given: a repeated one would mean nothing more.
    return tuple(dict.fromkeys(check_client_uri(uri, policy) for uri in uris))


def add_client(
    session: Session,
    client_id: str,
    redirect_uris: Iterable[str],
    post_logout_redirect_uris: Iterable[str],
    confidential: bool,
    policy: OriginPolicy,
) -> str | None:
    """Register a client; the answer is its new secret (confidential clients only), which is
    stored hashed and so can never be shown again. Raises ClientError for a refused one."""
    if not valid_client_id(client_id):
        raise ClientError(
            f"client id {client_id!r} not valid: 1 to 64 of the characters A-Z a-z 0-9 . _ -"
        )
    if client_id == VIEWER_CLIENT_ID:
        raise ClientError(f"{VIEWER_CLIENT_ID} is the local viewer's; `make up` registers it")
    redirects = _checked(redirect_uris, policy)
    if not redirects:
        raise ClientError("a client needs at least one redirect URI")
    post_logout = _checked(post_logout_redirect_uris, policy)
    if _find(session, client_id) is not None:
        raise ClientError(f"client {client_id!r} exists; `clients remove {client_id}` first")
    secret = secrets.token_urlsafe(32) if confidential else None
    session.add(
        OAuthClient(
            client_id=client_id,
            secret_hash=None if secret is None else hash_secret(secret),
            redirect_uris=uris_json(redirects),
            post_logout_redirect_uris=uris_json(post_logout),
        )
    )
    session.flush()
    return secret


def list_clients(session: Session) -> list[ClientRecord]:
    """Every registered client, by id; a row this code did not write is logged and left out
    (the services refuse it as unknown too; `remove_client` still removes it)."""
    records = []
    for row in session.scalars(select(OAuthClient).order_by(OAuthClient.client_id)):
        try:
            records.append(
                record_of(
                    row.client_id,
                    row.secret_hash,
                    row.redirect_uris,
                    row.post_logout_redirect_uris,
                    row.created_at,
                )
            )
        except ValueError as error:
            log.warning("oauth_clients row of %r is malformed (left out): %s", row.client_id, error)
    return records


def remove_client(session: Session, client_id: str) -> None:
    client = _find(session, client_id) if valid_client_id(client_id) else None
    if client is None:
        raise ClientError(f"no client {client_id!r}")
    session.delete(client)
    session.flush()


def ensure_viewer_client(session: Session, settings: Settings) -> bool:
    """Register the local viewer as a public client with its URIs for `settings` (a changed
    PUBLIC_HOST or HTTPS_PORT changes them); True when anything was written."""
    redirects, post_logout = (uris_json(uris) for uris in viewer_uris(settings))
    client = _find(session, VIEWER_CLIENT_ID)
    if client is None:
        client = OAuthClient(client_id=VIEWER_CLIENT_ID)
        session.add(client)
    elif (client.secret_hash, client.redirect_uris, client.post_logout_redirect_uris) == (
        None,
        redirects,
        post_logout,
    ):
        return False
    client.secret_hash = None
    client.redirect_uris = redirects
    client.post_logout_redirect_uris = post_logout
    session.flush()
    return True
