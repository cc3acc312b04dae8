"""The user reader of the policy and login services (services/stores/users.py), and what it spares.

Both services read the user table through the DB-API driver, so their
processes never load SQLAlchemy; the policy service, a plain WSGI app, not
Flask either: their heap would sit in every process of theirs.
Users are written here with the shared accounts code (SQLAlchemy), as the
token service and zhiva-admin write them, on real SQLite and real PostgreSQL.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete

from services.domain.credentials import authenticate, identity
from services.domain.user import UserRecord
from services.settings import PROJECT_DIR
from services.stores.accounts import find_user, revoke_all_tokens, save_user, set_disabled
from services.stores.db import Database
from services.stores.models import User
from services.stores.schema import upgrade
from services.stores.users import UnsupportedDatabase, UserTable
from tests.support.apps import signs_in

PASSWORD = "Str0ng-Passw0rd!"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'zhiva.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade(url)
    return url


@pytest.fixture
def writer(database_url: str):
    """Writes users as the token service does; removes them again (PostgreSQL is shared)."""
    database = Database(database_url)
    yield database
    with database.session() as session:
        session.execute(delete(User).where(User.username.like("%-policy-users-%")))
    database.engine.dispose()


def test_reads_what_the_accounts_code_wrote(database_url, writer):
    ann, bob = (f"{who}-policy-users-{uuid.uuid4().hex[:8]}" for who in ("ann", "bob"))
    with writer.session() as session:
        save_user(session, name="Ann", username=ann, password=PASSWORD, can_edit=True)
    users = UserTable(database_url)

    def rights(username: str) -> tuple[bool, int, bool, bool] | None:
        found = users.find(username)
        if found is None:
            return None
        return found.disabled, found.token_generation, found.can_edit, found.is_admin

    assert rights(ann) == (False, 0, True, False)
    # The one spelling of a username, as everywhere else (upper case folds).
    assert users.find(ann.upper()) == users.find(ann)
    with writer.session() as session:
        set_disabled(session, ann, True)
        revoke_all_tokens(session, ann)
        save_user(
            session, name="Bob", username=bob, password=PASSWORD, can_edit=True, is_admin=True
        )
    assert rights(ann) == (True, 1, True, False)
    assert rights(bob) == (False, 0, True, True)
    assert users.find("nobody-policy-users") is None
    assert users.find("\u0430" + ann[1:]) is None  # Cyrillic а: not a username at all
    assert users.ping() is True
    users.close()


def test_the_record_signs_in_as_the_orm_user_would(database_url, writer):
    """The login's read: the same answers from the one sign-in rule as through the ORM."""
    ann = f"ann-policy-users-{uuid.uuid4().hex[:8]}"
    with writer.session() as session:
        save_user(session, name="Ann Smith", username=ann, password=PASSWORD, can_edit=True)
        password_hash = find_user(session, ann).password_hash
        subject = find_user(session, ann).subject
    users = UserTable(database_url)
    account = UserRecord(
        name="Ann Smith",
        username=ann,
        password_hash=password_hash,
        disabled=False,
        can_edit=True,
        is_admin=False,
        token_generation=0,
        subject=subject,
    )
    assert users.find(ann.upper()) == account
    assert authenticate(users.find, ann, PASSWORD) == account
    with writer.session() as session:
        assert identity(account) == identity(signs_in(session, ann, PASSWORD))
    for username, password in ((ann, "Wrong-Passw0rd!"), (None, PASSWORD), (ann, None)):
        assert authenticate(users.find, username, password) is None
    with writer.session() as session:
        revoke_all_tokens(session, ann)
    assert users.find(ann).token_generation == 1
    with writer.session() as session:
        set_disabled(session, ann, True)
        assert signs_in(session, ann, PASSWORD) is None
    assert users.find(ann).disabled is True
    assert authenticate(users.find, ann, PASSWORD) is None
    assert users.find("nobody-policy-users") is None
    assert users.find("\u0430" + ann[1:]) is None
    users.close()


def test_missing_sqlite_file_is_an_error_not_a_new_database(tmp_path):
    path = tmp_path / "absent" / "zhiva.db"
    users = UserTable(f"sqlite:///{path}")
    with pytest.raises(sqlite3.OperationalError):  # one of users.unavailable: a 503
        users.find("ann")
    with pytest.raises(users.unavailable):
        users.find("ann")
    assert users.ping() is False
    path.parent.mkdir()
    with pytest.raises(sqlite3.Error):
        users.find("ann")
    assert not path.exists()


def test_a_broken_connection_is_replaced(tmp_path):
    url = f"sqlite:///{tmp_path / 'zhiva.db'}"
    upgrade(url)
    users = UserTable(url)
    assert users.find("ann") is None
    users._local.connection.close()  # as if the server had dropped it
    with pytest.raises(sqlite3.Error):
        users.find("ann")
    assert users.find("ann") is None


@pytest.mark.parametrize(
    "url",
    [
        "mysql://user@localhost/zhiva",
        "sqlite://",  # in memory: nothing the other services could have written
        "sqlite:///zhiva.db?mode=ro",
        "not a url",
    ],
)
def test_unsupported_database_urls_are_refused(url):
    with pytest.raises(UnsupportedDatabase):
        UserTable(url)


def _modules_after_create_app(service: str, config: dict[str, Any]) -> set[str]:
    """The modules a fresh interpreter holds after `create_app()` of `service`."""
    script = (
        "import json, sys\n"
        f"from services.{service}_service import create_app\n"
        f"create_app(json.loads(sys.argv[1]))\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(config)],
        cwd=PROJECT_DIR,
        env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(json.loads(result.stdout))


def _loaded(modules: set[str], package: str) -> set[str]:
    return {m for m in modules if m == package or m.startswith(package + ".")}


def test_policy_service_loads_neither_sqlalchemy_nor_flask(app_config):
    """Each policy process would carry heap it does not use (docs/BENCHMARKS.md)."""
    policy = _modules_after_create_app("policy", app_config)
    assert "services.stores.users" in policy
    for package in ("sqlalchemy", "flask", "jinja2", "alembic"):
        assert not _loaded(policy, package), package
    # The check can fail: the token service, which writes users, loads both.
    token = _modules_after_create_app("token", app_config)
    assert {"sqlalchemy.orm", "flask"} <= token


def test_login_service_loads_no_sqlalchemy(app_config):
    """Each login process would carry SQLAlchemy's heap for one SELECT (docs/BENCHMARKS.md)."""
    login = _modules_after_create_app("login", app_config)
    assert {"services.stores.users", "flask", "jinja2"} <= login
    for package in ("sqlalchemy", "alembic"):
        assert not _loaded(login, package), package


def test_the_orm_model_maps_exactly_the_columns_the_record_declares(monkeypatch):
    from services.stores import models

    models._check_mapping()  # what importing the model did
    monkeypatch.setattr(models, "USER_COLUMNS", (*models.USER_COLUMNS, "phone"))
    with pytest.raises(RuntimeError, match="phone"):
        models._check_mapping()
