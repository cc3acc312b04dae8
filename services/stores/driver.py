"""A table read through the DB-API driver alone, for the services that only read it.

The policy and login services read users (services/stores/users.py) and OpenID
Connect clients (services/stores/clients.py). Reading them through SQLAlchemy
would put its heap in every process of theirs, so these readers speak to the
driver SQLAlchemy would use: `sqlite3` for `sqlite:` URLs, psycopg for
`postgresql:` URLs. The schema is still Alembic's (services/migrations), and
the rows are still written only through SQLAlchemy; this only reads.

Connections are opened lazily, one per thread (the login's gthread worker
runs requests in threads, the policy's event loop in one; nothing is opened
in the master before fork), and one that failed is dropped and opened again
on the next call.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

log = logging.getLogger("zhiva")

# The same patience as the services' SQLAlchemy engines (services/stores/db.py).
SQLITE_TIMEOUT_SECONDS = 15.0


class UnsupportedDatabase(ValueError):
    """DATABASE_URL names a database this reader does not speak."""


class DriverTable:
    """One table's reader; `url` is the services' DATABASE_URL (SQLAlchemy's spelling).

    A subclass names its `table` and builds its queries with `placeholder`.
    """

    table: ClassVar[str]

    def __init__(self, url: str) -> None:
        scheme, _, rest = url.partition("://")
        dialect = scheme.split("+", 1)[0]
        self._connect: Callable[[], Any]
        if dialect == "sqlite":
            self._connect = self._sqlite(rest)
            self.placeholder = "?"
            self.errors: tuple[type[Exception], ...] = (sqlite3.Error,)
            # What SQLAlchemy wraps as OperationalError: read-only or full disk, a
            # lock held too long, a file that cannot be opened. The services answer 503.
            self.unavailable: tuple[type[Exception], ...] = (sqlite3.OperationalError,)
        elif dialect in ("postgresql", "postgres"):
            import psycopg  # only for PostgreSQL; imported here, in the master, to be shared

            # libpq takes the URL itself once SQLAlchemy's `+driver` is gone.
            conninfo = "postgresql://" + rest
            self._connect = lambda: psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
            self.placeholder = "%s"
            self.errors = (psycopg.Error,)
            self.unavailable = (psycopg.OperationalError,)  # the server gone or refusing
        else:
            raise UnsupportedDatabase(
                f"DATABASE_URL {scheme}://… is not SQLite or PostgreSQL, "
                "which the policy and login services read"
            )
        self._local = threading.local()

    @staticmethod
    def _sqlite(rest: str) -> Callable[[], sqlite3.Connection]:
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

    def ping(self) -> bool:
        """True when the table answers (the health check)."""
        try:
            self._fetch(f"SELECT count(*) FROM {self.table} WHERE 1 = 0", ())  # noqa: S608
            return True
        except self.errors:
            log.exception("database health check failed")
            return False
