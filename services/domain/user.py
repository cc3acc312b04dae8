"""A user as every service reads one: the columns of the `users` table, declared once.

The ORM model (services/stores/models.py) maps exactly these columns, and checks
so when it is imported; the reader that the policy and login services use
without SQLAlchemy (services/stores/users.py) selects them by these names.
Adding a column is a field here, its mapping there and a migration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class UserRecord:
    name: str
    username: str  # normalised (services/domain/names.py), unique
    password_hash: str = field(repr=False)  # bcrypt
    can_edit: bool
    is_admin: bool
    disabled: bool
    # Tokens carry the generation they were issued under; raising it revokes them all.
    token_generation: int
    # The OpenID Connect `sub`: a random UUID given when the user is created and never
    # changed, so a user re-created under the same name is not taken for the old one.
    subject: str


USER_COLUMNS: tuple[str, ...] = tuple(column.name for column in fields(UserRecord))
# How a database value becomes the field's type (SQLite answers booleans as integers).
_CONVERTERS: dict[str, Callable[[Any], Any]] = {"str": str, "bool": bool, "int": int}
_CONVERT = tuple(_CONVERTERS[str(column.type)] for column in fields(UserRecord))


def record_of(row: Sequence[Any]) -> UserRecord:
    """The record of a row selected as USER_COLUMNS, in that order."""
    values = {
        name: convert(value)
        for name, convert, value in zip(USER_COLUMNS, _CONVERT, row, strict=True)
    }
    return UserRecord(**values)
