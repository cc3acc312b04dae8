"""The user table read through the DB-API driver alone, for the services that only read it.

The policy service asks whether a user is there, enabled, with which token
generation and rights; the login service checks a password against the same
record (`find`, services/domain/user.py). Both read it without SQLAlchemy, through
the driver (services/stores/driver.py, which also holds the connection handling);
users are written only through SQLAlchemy (services/stores/accounts.py).
"""

from __future__ import annotations

from typing import Any

from services.domain.names import normalise_username
from services.domain.user import USER_COLUMNS, UserRecord, record_of
from services.stores.driver import DriverTable
from services.stores.driver import (
    UnsupportedDatabase as UnsupportedDatabase,  # re-exported: raised by UserTable()
)


def _select_by_username(columns: str, placeholder: str) -> str:
    return f"SELECT {columns} FROM users WHERE username = {placeholder}"  # noqa: S608


class UserTable(DriverTable):
    """Reads one user's row; `url` is the services' DATABASE_URL (SQLAlchemy's spelling)."""

    table = "users"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._user_query = _select_by_username(", ".join(USER_COLUMNS), self.placeholder)

    def _by_username(self, sql: str, username: str) -> Any:
        normalised = normalise_username(username)
        if normalised is None:
            return None
        return self._fetch(sql, (normalised,))

    def find(self, username: str) -> UserRecord | None:
        """The user's record, None when there is no such user; a database error is raised."""
        row = self._by_username(self._user_query, username)
        if row is None:
            return None
        return record_of(row)
