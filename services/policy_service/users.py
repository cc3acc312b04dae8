"""The policy service's one read of the user table, through the DB-API driver alone.

The policy asks one question of the database: is this user there, enabled,
with which token generation and rights. Answering it through SQLAlchemy would
load the ORM (about 19 MB of heap in every policy process, issue 6), so this
module speaks to the driver SQLAlchemy would use: `sqlite3` for `sqlite:`
URLs, psycopg for `postgresql:` URLs. The schema is still Alembic's
(services/migrations); this only reads the columns named in USER_COLUMNS.

Connections are opened lazily, one per thread (gunicorn's gthread worker runs
requests in threads; nothing is opened in the master before fork), and one
that failed is dropped and opened again on the next call.
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

log = logging.getLogger("zhiva.policy")

USER_COLUMNS = "disabled, token_generation, can_edit, is_admin"
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


class UserTable:
    """Reads one user's row; `url` is the services' DATABASE_URL (SQLAlchemy's spelling)."""

    def __init__(self, url: str) -> None:
        scheme, _, rest = url.partition("://")
        dialect = scheme.split("+", 1)[0]
        if dialect == "sqlite":
            self._connect = self._sqlite(rest)
            self._query = f"SELECT {USER_COLUMNS} FROM users WHERE username = ?"  # noqa: S608
            self.errors: tuple[type[Exception], ...] = (sqlite3.Error,)
        elif dialect in ("postgresql", "postgres"):
            import psycopg  # only for PostgreSQL; imported here, in the master, to be shared

            # libpq takes the URL itself once SQLAlchemy's `+driver` is gone.
            conninfo = "postgresql://" + rest
            self._connect = lambda: psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
            self._query = f"SELECT {USER_COLUMNS} FROM users WHERE username = %s"  # noqa: S608
            self.errors = (psycopg.Error,)
        else:
            raise UnsupportedDatabase(
                f"DATABASE_URL {scheme}://… is not SQLite or PostgreSQL, "
                "which the policy service reads"
            )
        self._local = threading.local()

    @staticmethod
    def _sqlite(rest: str) -> Any:
        # SQLAlchemy's form: sqlite:///relative.db, sqlite:////absolute.db; no query options.
        path, _, query = rest.partition("?")
        if not path.startswith("/") or len(path) < 2 or query:
            raise UnsupportedDatabase(
                "the policy service reads SQLite from a file URL without options "
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

    def find(self, username: str) -> UserRow | None:
        """The user's row, None when there is no such user; a database error is raised."""
        normalised = normalise_username(username)
        if normalised is None:
            return None
        row = self._fetch(self._query, (normalised,))
        if row is None:
            return None
        disabled, generation, can_edit, is_admin = row
        return UserRow(bool(disabled), int(generation), bool(can_edit), bool(is_admin))

    def ping(self) -> bool:
        """True when the user table answers (the health check)."""
        try:
            self._fetch("SELECT count(*) FROM users WHERE 1 = 0", ())
            return True
        except self.errors:
            log.exception("database health check failed")
            return False
