"""The user table read through the DB-API driver alone, for the services that only read it.

The policy service asks whether a user is there, enabled, with which token
generation and rights (`find`); the login service asks for the account a
password is checked against (`account`). Answering either through SQLAlchemy
would load it (about 19 MB of heap in every process, issue 6), so this module
speaks to the driver SQLAlchemy would use: `sqlite3` for `sqlite:` URLs,
psycopg for `postgresql:` URLs. The schema is still Alembic's
(services/migrations), and users are still written only through SQLAlchemy
(services/shared/accounts.py); this only reads.

Connections are opened lazily, one per thread (the login's gthread worker
runs requests in threads, the policy's event loop in one; nothing is opened
in the master before fork), and one that failed is dropped and opened again
on the next call.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from services.shared.names import normalise_username

log = logging.getLogger("zhiva")

# What the policy decides on (`find`).
USER_COLUMNS = "disabled, token_generation, can_edit, is_admin"
# What the login checks a password against and makes an Identity of (`account`).
ACCOUNT_COLUMNS = "name, username, password_hash, disabled, can_edit, is_admin, token_generation"
# The same patience as the services' SQLAlchemy engines (services/shared/db.py).
SQLITE_TIMEOUT_SECONDS = 15.0


class UnsupportedDatabase(ValueError):
    """DATABASE_URL names a database this reader does not speak."""


@dataclass(frozen=True)
class UserRow:
    disabled: bool
    generation: int
    can_edit: bool
    is_admin: bool


@dataclass(frozen=True)
class Account:
    """A user as the login reads it, named as the ORM's User is, so the one sign-in
    rule (services/shared/credentials.py) takes either."""

    name: str
    username: str
    password_hash: str
    disabled: bool
    can_edit: bool
    is_admin: bool
    token_generation: int


def _select_by_username(columns: str, placeholder: str) -> str:
    return f"SELECT {columns} FROM users WHERE username = {placeholder}"  # noqa: S608


class UserTable:
    """Reads one user's row; `url` is the services' DATABASE_URL (SQLAlchemy's spelling)."""

    def __init__(self, url: str) -> None:
        scheme, _, rest = url.partition("://")
        dialect = scheme.split("+", 1)[0]
        if dialect == "sqlite":
            self._connect = self._sqlite(rest)
            placeholder = "?"
            self.errors: tuple[type[Exception], ...] = (sqlite3.Error,)
            # What SQLAlchemy wraps as OperationalError: read-only or full disk, a
            # lock held too long, a file that cannot be opened. The services answer 503.
            self.unavailable: tuple[type[Exception], ...] = (sqlite3.OperationalError,)
        elif dialect in ("postgresql", "postgres"):
            import psycopg  # only for PostgreSQL; imported here, in the master, to be shared

            # libpq takes the URL itself once SQLAlchemy's `+driver` is gone.
            conninfo = "postgresql://" + rest
            self._connect = lambda: psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
            placeholder = "%s"
            self.errors = (psycopg.Error,)
            self.unavailable = (psycopg.OperationalError,)  # the server gone or refusing
        else:
            raise UnsupportedDatabase(
                f"DATABASE_URL {scheme}://… is not SQLite or PostgreSQL, "
                "which the policy and login services read"
            )
        self._user_query = _select_by_username(USER_COLUMNS, placeholder)
        self._account_query = _select_by_username(ACCOUNT_COLUMNS, placeholder)
        self._local = threading.local()

    @staticmethod
    def _sqlite(rest: str) -> Any:
        # SQLAlchemy's form: sqlite:///relative.db, sqlite:////absolute.db; no query options.
        path, _, query = rest.partition("?")
        if not path.startswith("/") or len(path) < 2 or query:
            raise UnsupportedDatabase(
                "the policy and login services read SQLite from a file URL without options "
                "(sqlite:////path/to/zhiva.db)"
            )
        # mode=rw: a missing database is an error, never a new empty file.
        uri = Path(unquote(path[1:])).absolute().as_uri() + "?mode=rw"

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(
                uri, uri=True, timeout=SQLITE_TIMEOUT_SECONDS, isolation_level=None
            )

        return connect

    def _connection(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            self._local.connection = connection
        return connection

    def close(self) -> None:
        """Close the calling thread's connection (the next call opens a new one)."""
        self._drop()

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # noqa: BLE001, S110 - it is being thrown away anyway
                pass

    def _fetch(self, sql: str, args: tuple[Any, ...]) -> Any:
        try:
            cursor = self._connection().execute(sql, args)
            try:
                return cursor.fetchone()
            finally:
                cursor.close()
        except self.errors:
            # A broken connection (server restarted, file replaced) is not reused.
            self._drop()
            raise

    def _by_username(self, sql: str, username: str) -> Any:
        normalised = normalise_username(username)
        if normalised is None:
            return None
        return self._fetch(sql, (normalised,))

    def find(self, username: str) -> UserRow | None:
        """The user's row, None when there is no such user; a database error is raised."""
        row = self._by_username(self._user_query, username)
        if row is None:
            return None
        disabled, generation, can_edit, is_admin = row
        return UserRow(bool(disabled), int(generation), bool(can_edit), bool(is_admin))

    def account(self, username: str) -> Account | None:
        """The user's account, None when there is no such user; a database error is raised."""
        row = self._by_username(self._account_query, username)
        if row is None:
            return None
        name, stored_username, password_hash, disabled, can_edit, is_admin, generation = row
        return Account(
            name=name,
            username=stored_username,
            password_hash=password_hash,
            disabled=bool(disabled),
            can_edit=bool(can_edit),
            is_admin=bool(is_admin),
            token_generation=int(generation),
        )

    def ping(self) -> bool:
        """True when the user table answers (the health check)."""
        try:
            self._fetch("SELECT count(*) FROM users WHERE 1 = 0", ())
            return True
        except self.errors:
            log.exception("database health check failed")
            return False
