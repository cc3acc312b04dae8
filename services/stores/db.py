"""Database engine and sessions; SQLite by default, PostgreSQL by DATABASE_URL.

For the token service, the admin CLI and the migrations, which write users. A
service that only reads them uses services/stores/users.py, which spares
loading SQLAlchemy.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger("zhiva")


SQLITE_FILES = ("", "-wal", "-shm", "-journal")


def private_sqlite_files(url: str) -> None:
    """The SQLite database and its companion files: mode 0600 (they hold password hashes).

    SQLite makes a new database 0644 less the umask, and gives the WAL and shared-memory
    files the database's own mode, so the database is made here first, 0600; one made
    before with more rights loses them.
    """
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if not path.parent.is_dir():
        return  # SQLite says what is wrong when it opens it
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except OSError:
        pass  # it exists, or cannot be made: then SQLite says why when it opens it
    for suffix in SQLITE_FILES:
        companion = path.with_name(path.name + suffix)
        try:
            mode = stat.S_IMODE(companion.stat().st_mode)
        except OSError:
            continue
        if mode & 0o077:
            try:
                companion.chmod(mode & 0o700)
            except OSError:
                # A read-only disk, or another user's file: not opening it would protect
                # nothing, and the directory around it (STATE_DIR, 0700) still does.
                log.warning("could not make %s private (mode %04o)", companion, mode)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        private_sqlite_files(url)
        # busy_timeout lets concurrent writers (gunicorn workers, the CLI) wait
        # for each other instead of failing; WAL lets readers go on meanwhile.
        engine = create_engine(url, connect_args={"timeout": 15})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=15000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class Database:
    # Read-only or full disk, a lock held too long, PostgreSQL gone: nothing was
    # written (the session rolled back), so the services answer 503 (web.py).
    unavailable: tuple[type[Exception], ...] = (OperationalError,)

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any error."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def ping(self) -> bool:
        """True when the database answers (the health check)."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - any failure means "not healthy"
            log.exception("database health check failed")
            return False
