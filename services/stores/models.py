"""The ORM mapping of the users, OAuth clients and shares tables. Schema changes go through Alembic
(services/migrations).

The user columns a service reads are declared once, in services/domain/user.py; the
mapping below must map exactly those (and its own keys and timestamps), or importing
this fails.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import DateTime, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.domain.names import MAX_NAME_LENGTH
from services.domain.user import USER_COLUMNS


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME_LENGTH))
    username: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(100))
    can_edit: Mapped[bool] = mapped_column(default=False)
    is_admin: Mapped[bool] = mapped_column(default=False)
    disabled: Mapped[bool] = mapped_column(default=False)
    # Tokens carry the generation they were issued under; raising it revokes them all.
    token_generation: Mapped[int] = mapped_column(default=0)
    # The OpenID Connect `sub` (migration 0002): random, given once, never changed.
    subject: Mapped[str] = mapped_column(
        String(36), unique=True, index=True, default=lambda: str(uuid.uuid4())
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=_now, onupdate=_now
    )


class OAuthClient(Base):
    """A registered OpenID Connect client (migration 0003); services/domain/clients.py has the
    rules, services/stores/oauth_clients.py writes it, services/stores/clients.py reads it."""

    __tablename__ = "oauth_clients"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    # SHA-256 hex of the client's secret; NULL for a public client (no secret at all).
    secret_hash: Mapped[str | None] = mapped_column(String(64))
    # JSON lists of strings: the driver readers parse them alike on SQLite and PostgreSQL.
    redirect_uris: Mapped[str] = mapped_column(Text)
    post_logout_redirect_uris: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Share(Base):
    """A share link (migration 0004); services/domain/shares.py has the rules,
    services/stores/shares.py writes and reads it, services/stores/share_table.py reads it
    for the login service. Its id is the `jti` of every token its link mints."""

    __tablename__ = "shares"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    study_id: Mapped[str] = mapped_column(String(64))  # Orthanc's ID of the study
    created_by: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # bcrypt of the PIN; NULL: the link opens without one.
    pin_hash: Mapped[str | None] = mapped_column(String(100))


# Columns of the users table that are not part of a user's record.
_BOOKKEEPING = {"id", "created_at", "updated_at"}


def _check_mapping() -> None:
    mapped = {column.key for column in User.__table__.columns} - _BOOKKEEPING
    if mapped != set(USER_COLUMNS):
        raise RuntimeError(
            f"User maps {sorted(mapped)} but UserRecord declares {sorted(USER_COLUMNS)}: "
            "change services/domain/user.py and this model together (and add a migration)"
        )


_check_mapping()
