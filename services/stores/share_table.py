"""Shares read through the DB-API driver alone, for the login service's link page.

The login service opens share links (services/login_service/shares.py) and, like
its user and client readers (services/stores/users.py, clients.py), reads the
table without SQLAlchemy's heap. Shares are written only through SQLAlchemy
(services/stores/shares.py), which builds its records with `record_of` here too,
so both sides agree on what a row means.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime

from services.domain.shares import ShareRecord
from services.stores.driver import DriverTable

log = logging.getLogger("zhiva")

SHARE_COLUMNS = (
    "id",
    "study_uid",
    "study_id",
    "created_by",
    "created_at",
    "expires_at",
    "revoked_at",
    "pin_hash",
)
# What services/domain/shares.py `new_share_id` makes: anything else was never stored.
SHARE_ID = re.compile(r"[0-9a-f]{32}")


def valid_share_id(value: object) -> bool:
    return isinstance(value, str) and SHARE_ID.fullmatch(value) is not None


def epoch(stored: object) -> int:
    """Epoch seconds of a stored timestamp: a datetime (SQLAlchemy, psycopg) or the text
    SQLite keeps; a timestamp without a zone is UTC (SQLite keeps none)."""
    moment = datetime.fromisoformat(stored) if isinstance(stored, str) else stored
    if not isinstance(moment, datetime):
        raise ValueError("not a timestamp")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def record_of(
    share_id: object,
    study_uid: object,
    study_id: object,
    created_by: object,
    created_at: object,
    expires_at: object,
    revoked_at: object,
    pin_hash: object,
) -> ShareRecord:
    """The record of a stored row (SHARE_COLUMNS, in order); ValueError for a row this code
    did not write."""
    if not (
        isinstance(share_id, str)
        and isinstance(study_uid, str)
        and isinstance(study_id, str)
        and isinstance(created_by, str)
        and (pin_hash is None or isinstance(pin_hash, str))
    ):
        raise ValueError("a text column is not text")
    return ShareRecord(
        id=share_id,
        study_uid=study_uid,
        study_id=study_id,
        created_by=created_by,
        created_at=epoch(created_at),
        expires_at=epoch(expires_at),
        pin_hash=pin_hash,
        revoked=revoked_at is not None,
    )


class ShareTable(DriverTable):
    """Reads one share's row; `url` is the services' DATABASE_URL (SQLAlchemy's spelling)."""

    table = "shares"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._query = (
            f"SELECT {', '.join(SHARE_COLUMNS)} FROM shares "  # noqa: S608
            f"WHERE id = {self.placeholder}"
        )

    def find(self, share_id: str) -> ShareRecord | None:
        """The share, None when there is none (or its row cannot be read: then it is logged,
        and the link is refused as unknown); a database error is raised."""
        if not valid_share_id(share_id):
            return None  # never stored, so not worth a query
        row = self._fetch(self._query, (share_id,))
        if row is None:
            return None
        try:
            return record_of(*row)
        except ValueError as error:
            log.error("shares row %s is malformed: %s", share_id, error)
            return None
