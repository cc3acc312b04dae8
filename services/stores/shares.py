"""Shares written and read through SQLAlchemy: the token service's API and `zhiva-admin shares`.

The rules (a study UID, a lifetime, a PIN) are services/domain/shares.py's; the
login service reads shares without SQLAlchemy (services/stores/share_table.py).
A share is never deleted: revoking one stamps `revoked_at`, and the caller also
revokes its id in Redis (RevocationStore.revoke), which is what every door checks.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.domain.passwords import hash_password
from services.domain.shares import (
    ShareRecord,
    check_lifetime,
    check_pin,
    check_study_uid,
    new_share_id,
)
from services.stores.models import Share
from services.stores.share_table import record_of, valid_share_id

# The creator the CLI writes (an administrator on the server's shell).
# Not a valid username (services/domain/names.py), so no user's shares are confused with it.
CLI_CREATOR = "(zhiva-admin)"


def _record(row: Share) -> ShareRecord:
    return record_of(
        row.id,
        row.study_uid,
        row.study_id,
        row.created_by,
        row.created_at,
        row.expires_at,
        row.revoked_at,
        row.pin_hash,
    )


def _moment(epoch_seconds: int) -> datetime:
    return datetime.fromtimestamp(epoch_seconds, UTC)


def create_share(
    session: Session,
    *,
    study_uid: str,
    study_id: str,
    created_by: str,
    lifetime: int | None = None,
    pin: str | None = None,
    now: int | None = None,
) -> ShareRecord:
    """Store a new share of the study (Orthanc's `study_id` for `study_uid`, found by the
    caller) for `lifetime` seconds (default 7 days); ShareError for a refused value."""
    study_uid = check_study_uid(study_uid)
    seconds = check_lifetime(lifetime)
    checked_pin = check_pin(pin)
    created = int(time.time()) if now is None else now
    row = Share(
        id=new_share_id(),
        study_uid=study_uid,
        study_id=study_id,
        created_by=created_by,
        created_at=_moment(created),
        expires_at=_moment(created + seconds),
        revoked_at=None,
        pin_hash=None if checked_pin is None else hash_password(checked_pin),
    )
    session.add(row)
    session.flush()
    return _record(row)


def list_shares(session: Session, created_by: str | None) -> list[ShareRecord]:
    """The shares `created_by` made, or every share for None; the newest first."""
    query = select(Share).order_by(Share.created_at.desc(), Share.id)
    if created_by is not None:
        query = query.where(Share.created_by == created_by)
    return [_record(row) for row in session.scalars(query)]


def _find(session: Session, share_id: str) -> Share | None:
    if not valid_share_id(share_id):
        return None
    return session.get(Share, share_id)


def find_share(session: Session, share_id: str) -> ShareRecord | None:
    row = _find(session, share_id)
    return None if row is None else _record(row)


def revoke_share(session: Session, share_id: str) -> ShareRecord | None:
    """Stamp the share revoked (once: revoking it again changes nothing); None when there is
    no such share. The caller revokes its id in Redis too, before committing."""
    row = _find(session, share_id)
    if row is None:
        return None
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        session.flush()
    return _record(row)


def iso(epoch_seconds: int) -> str:
    """ISO 8601 in UTC, to the second (`2026-12-14T09:30:00Z`): how shares' times are shown."""
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def listing(share: ShareRecord) -> dict[str, Any]:
    """What the API (`GET /auth/shares`) and `zhiva-admin shares list` show of a share:
    never a token, nor the PIN's hash."""
    return {
        "id": share.id,
        "study": share.study_uid,
        "createdBy": share.created_by,
        "createdAt": iso(share.created_at),
        "expiresAt": iso(share.expires_at),
        "revoked": share.revoked,
        "pin": share.pin_hash is not None,
    }
