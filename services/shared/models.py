"""The shared user model. Schema changes go through Alembic (services/migrations)."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime

from sqlalchemy import DateTime, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
MAX_NAME_LENGTH = 120


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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=_now, onupdate=_now
    )


def normalise_username(raw: object) -> str | None:
    """The one spelling of a username, or None when it is not valid.

    NFKC folds compatibility forms (full-width letters) and case is folded;
    what is left must be plain ASCII, so look-alikes from other scripts
    (Cyrillic `а` in `аdmin`) are refused instead of becoming a second user.
    """
    if not isinstance(raw, str):
        return None
    username = unicodedata.normalize("NFKC", raw).strip().lower()
    return username if USERNAME_RE.fullmatch(username) else None


def normalise_name(raw: object) -> str | None:
    """A display name: printable, 1 to MAX_NAME_LENGTH characters, or None."""
    if not isinstance(raw, str):
        return None
    name = unicodedata.normalize("NFC", raw).strip()
    if not 0 < len(name) <= MAX_NAME_LENGTH or not name.isprintable():
        return None
    return name
