"""The user model and account functions, on SQLite and on the machine's PostgreSQL.

Both schemas come from the Alembic migrations (as `make up` makes them); the
PostgreSQL database is this run's own (`postgres_url`). The token service's
whole flow runs on PostgreSQL too.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from services.domain.tokens import TokenKind
from services.stores.accounts import (
    AccountError,
    find_user,
    revoke_all_tokens,
    save_user,
    set_disabled,
)
from services.stores.db import Database
from services.stores.models import User
from services.stores.schema import upgrade
from services.token_service import create_app
from tests.conftest import ADMIN_PASSWORD
from tests.support.apps import signs_in

PASSWORD = "Model-Passw0rd!"


@pytest.fixture(scope="session")
def migrated_postgres(postgres_url) -> str:
    upgrade(postgres_url)
    upgrade(postgres_url)  # a second run (a second `make up`) changes nothing
    return postgres_url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, app_config) -> str:
    if request.param == "sqlite":
        return app_config["DATABASE_URL"]
    return request.getfixturevalue("migrated_postgres")


@pytest.fixture
def db(database_url):
    database = Database(database_url)
    yield database
    database.engine.dispose()


@pytest.fixture
def username() -> str:
    # Unique per test: the PostgreSQL database is shared by the whole run.
    return f"user-{uuid.uuid4().hex[:10]}"


def test_save_find_authenticate_and_overwrite(db, username):
    with db.session() as session:
        created = save_user(
            session,
            name="  Ann Example ",
            username=f"  {username.upper()} ",
            password=PASSWORD,
            can_edit=True,
        )
        created_id = created.id
    with db.session() as session:
        user = find_user(session, username)
        assert user.id == created_id and user.username == username
        assert user.name == "Ann Example" and user.can_edit and not user.is_admin
        assert not user.disabled and user.token_generation == 0
        assert user.created_at is not None and user.updated_at is not None
        assert user.password_hash.startswith("$2b$12$")
        assert signs_in(session, username.upper(), PASSWORD).id == created_id
        assert signs_in(session, username, "Wrong-Passw0rd!") is None
        assert signs_in(session, "nobody-" + username, PASSWORD) is None
    with db.session() as session:
        again = save_user(
            session, name="Ann Renamed", username=username, password=PASSWORD, is_admin=True
        )
        assert again.id == created_id and again.is_admin and not again.can_edit
    with db.session() as session:
        assert session.scalar(select(User).where(User.username == username)).name == "Ann Renamed"


def test_username_is_unique_in_the_schema(db, username):
    with db.session() as session:
        session.add(
            User(
                name="A",
                username=username,
                password_hash="x",
                can_edit=False,
                is_admin=False,
                disabled=False,
                token_generation=0,
            )
        )
    with pytest.raises(IntegrityError), db.session() as session:
        session.add(
            User(
                name="B",
                username=username,
                password_hash="y",
                can_edit=False,
                is_admin=False,
                disabled=False,
                token_generation=0,
            )
        )
    with db.session() as session:
        assert len(session.scalars(select(User).where(User.username == username)).all()) == 1


def test_disable_and_revoke(db, username):
    with db.session() as session:
        save_user(session, name="Ann", username=username, password=PASSWORD)
    with db.session() as session:
        assert revoke_all_tokens(session, username).token_generation == 1
        set_disabled(session, username, True)
    with db.session() as session:
        assert signs_in(session, username, PASSWORD) is None  # disabled
        assert find_user(session, username).token_generation == 1
        set_disabled(session, username, False)
    with db.session() as session:
        assert signs_in(session, username, PASSWORD) is not None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": ""}, "Name not valid"),
        ({"name": "x" * 121}, "Name not valid"),
        ({"username": "a b"}, "username not valid"),
        ({"username": "\u0430dmin"}, "username not valid"),
        ({"password": "weak"}, "The password needs"),
    ],
)
def test_save_user_refusals_leave_nothing(db, username, fields, message):
    with pytest.raises(AccountError, match=message), db.session() as session:
        save_user(session, **{"name": "Ann", "username": username, "password": PASSWORD, **fields})
    with db.session() as session:
        assert find_user(session, username) is None
        with pytest.raises(AccountError, match="User doesn't exists"):
            revoke_all_tokens(session, username)


def test_token_service_flow_on_postgresql(app_config, migrated_postgres, username):
    app = create_app({**app_config, "DATABASE_URL": migrated_postgres})
    client = app.test_client()
    try:
        response = client.post(
            "/auth/generate-token",
            json={
                "name": "Pat",
                "username": username,
                "password": ADMIN_PASSWORD,
                "userPassword": PASSWORD,
                "createUserIfNotExists": True,
            },
        )
        assert response.status_code == 200
        auth = response.get_json()["token"]
        redeemed = client.post(
            "/auth/generate-access-token", headers={"Authorization": f"Bearer {auth}"}
        )
        assert redeemed.status_code == 200
        refreshed = client.post(
            "/auth/refresh-token",
            headers={"Authorization": f"Bearer {redeemed.get_data(as_text=True)}"},
        )
        access = refreshed.headers["Authorization"].removeprefix("Bearer ")
        assert (
            app.extensions["zhiva"].codec.verify(access, TokenKind.ACCESS)["username"] == username
        )
        assert client.get("/healthz").get_json()["checks"] == {"redis": True, "database": True}
    finally:
        with app.extensions["zhiva"].db.session() as session:
            session.execute(delete(User).where(User.username == username))
        app.extensions["zhiva"].db.engine.dispose()
        app.extensions["zhiva"].close()
