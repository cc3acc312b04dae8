"""The OpenID Connect data layer: `users.subject`, the `oauth_clients` table, their migrations,
the driver reader of clients, the writer and `zhiva-admin clients`.

On real SQLite and the machine's real PostgreSQL. The migration tests take a database
of their own (the run's shared PostgreSQL database is at head already); the others use
the shared one with client ids unique to the test.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from click.testing import CliRunner
from sqlalchemy.exc import IntegrityError

from services.admin.cli import main
from services.domain.clients import (
    VIEWER_CLIENT_ID,
    ClientError,
    ClientRecord,
    check_client_uri,
    hash_secret,
    valid_client_id,
    viewer_uris,
)
from services.domain.credentials import identity
from services.domain.origins import OriginPolicy
from services.settings import PROJECT_DIR, load_settings
from services.stores.accounts import find_user, revoke_all_tokens, save_user
from services.stores.clients import ClientTable
from services.stores.db import Database, make_engine
from services.stores.models import OAuthClient, User
from services.stores.oauth_clients import (
    add_client,
    ensure_viewer_client,
    list_clients,
    remove_client,
)
from services.stores.schema import alembic_config, upgrade
from services.stores.users import UserTable

PASSWORD = "Oidc-Passw0rd!"
# Allowed by every test configuration: ALWAYS_ALLOWED_ORIGINS (services/settings.py).
APP = "https://localhost:3000/callback"
OTHER_APP = "https://viewer.zhiva.ai/oidc/callback"
POLICY = OriginPolicy(["https://*.zhiva.ai", "https://localhost:*"])


# --- databases --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def migrated_postgres(postgres_url: str) -> str:
    upgrade(postgres_url)
    return postgres_url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, app_config: dict[str, Any]) -> str:
    if request.param == "sqlite":
        return app_config["DATABASE_URL"]
    return request.getfixturevalue("migrated_postgres")


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.engine.dispose()


@pytest.fixture
def engine_of() -> Iterator[Any]:
    """Engines made by the test, disposed when it ends."""
    engines: list[sa.Engine] = []

    def make(url: str) -> sa.Engine:
        engines.append(make_engine(url))
        return engines[-1]

    yield make
    for engine in engines:
        engine.dispose()


def client_id() -> str:
    # Unique per test: the PostgreSQL database is shared by the whole run.
    return f"app-{uuid.uuid4().hex[:10]}"


# The users table as migration 0001 made it, for rows written before 0002.
USERS_0001 = sa.table(
    "users",
    sa.column("name", sa.String()),
    sa.column("username", sa.String()),
    sa.column("password_hash", sa.String()),
    sa.column("can_edit", sa.Boolean()),
    sa.column("is_admin", sa.Boolean()),
    sa.column("disabled", sa.Boolean()),
    sa.column("token_generation", sa.Integer()),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)


def _old_user(username: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "name": username.title(),
        "username": username,
        "password_hash": "x",
        "can_edit": False,
        "is_admin": False,
        "disabled": False,
        "token_generation": 0,
        "created_at": now,
        "updated_at": now,
    }


def _indexes(engine: sa.Engine, table: str) -> dict[str, bool]:
    return {ix["name"]: bool(ix["unique"]) for ix in sa.inspect(engine).get_indexes(table)}


def _subjects(engine: sa.Engine) -> dict[str, str]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT username, subject FROM users")).all()
    return {username: subject for username, subject in rows}


# --- migrations -------------------------------------------------------------------------


def test_0002_gives_every_existing_user_its_own_subject(empty_database, engine_of):
    config = alembic_config(empty_database)
    command.upgrade(config, "0001")
    engine = engine_of(empty_database)
    names = ["ann", "bob", "cat"]
    with engine.begin() as connection:
        connection.execute(USERS_0001.insert(), [_old_user(name) for name in names])

    command.upgrade(config, "0002")
    subjects = _subjects(engine)
    assert sorted(subjects) == names
    assert len(set(subjects.values())) == len(names)
    assert all(uuid.UUID(subject).version == 4 for subject in subjects.values())
    assert _indexes(engine, "users") == {"ix_users_username": True, "ix_users_subject": True}
    # What the services read now, through the driver: the same subject.
    users = UserTable(empty_database)
    assert users.find("bob").subject == subjects["bob"]
    users.close()

    # NOT NULL and UNIQUE hold in the schema itself, not only in the model.
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(USERS_0001.insert(), [_old_user("dan")])
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE users SET subject = :s WHERE username = 'bob'"),
            {"s": subjects["ann"]},
        )
    assert _subjects(engine) == subjects

    command.downgrade(config, "0001")
    assert "subject" not in {c["name"] for c in sa.inspect(engine).get_columns("users")}
    assert _indexes(engine, "users") == {"ix_users_username": True}
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM users")).scalar() == 3
    command.upgrade(config, "head")  # and up again: new subjects, still distinct
    assert len(set(_subjects(engine).values())) == len(names)


def test_0002_on_an_empty_table(empty_database, engine_of):
    upgrade(empty_database)
    engine = engine_of(empty_database)
    assert _subjects(engine) == {}
    assert _indexes(engine, "users")["ix_users_subject"] is True


def test_0003_makes_the_clients_table_and_drops_it(empty_database, engine_of):
    config = alembic_config(empty_database)
    command.upgrade(config, "0002")
    engine = engine_of(empty_database)
    assert not sa.inspect(engine).has_table("oauth_clients")
    command.upgrade(config, "0003")
    columns = {c["name"]: c["nullable"] for c in sa.inspect(engine).get_columns("oauth_clients")}
    assert columns == {
        "id": False,
        "client_id": False,
        "secret_hash": True,
        "redirect_uris": False,
        "post_logout_redirect_uris": False,
        "created_at": False,
    }
    assert _indexes(engine, "oauth_clients") == {"ix_oauth_clients_client_id": True}
    clients = sa.table(
        "oauth_clients",
        *(sa.column(name) for name in ("client_id", "redirect_uris", "post_logout_redirect_uris")),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    row = {
        "client_id": "one",
        "redirect_uris": "[]",
        "post_logout_redirect_uris": "[]",
        "created_at": datetime.now(UTC),
    }
    with engine.begin() as connection:
        connection.execute(clients.insert(), [row])
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(clients.insert(), [row])
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(clients.insert(), [{**row, "client_id": "two", "redirect_uris": None}])

    command.downgrade(config, "0002")
    assert not sa.inspect(engine).has_table("oauth_clients")
    assert "subject" in {c["name"] for c in sa.inspect(engine).get_columns("users")}


# --- the subject --------------------------------------------------------------------------


def test_the_subject_is_given_once_and_never_changes(db, database_url):
    ann = f"ann-oidc-{uuid.uuid4().hex[:8]}"
    with db.session() as session:
        subject = save_user(session, name="Ann", username=ann, password=PASSWORD).subject
    assert uuid.UUID(subject).version == 4
    with db.session() as session:
        # Overwritten by /auth/generate-token or reset-password, revoked: the same person.
        save_user(session, name="Ann B", username=ann, password=PASSWORD, can_edit=True)
        revoke_all_tokens(session, ann)
    users = UserTable(database_url)
    with db.session() as session:
        assert identity(find_user(session, ann)).subject == subject
    assert users.find(ann).subject == subject
    # Deleted and created again: another person to every client that kept the old `sub`.
    with db.session() as session:
        session.delete(find_user(session, ann))
    with db.session() as session:
        save_user(session, name="Ann", username=ann, password=PASSWORD)
    assert users.find(ann).subject != subject
    users.close()


# --- the domain rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://localhost:3000/callback", "does not start with https://"),
        ("HTTPS://localhost:3000/callback", "does not start with https://"),
        ("https://evil.example.com/callback", "is not allowed"),
        ("https://localhost:3000/callback#done", "fragment"),
        ("https://localhost:3000/callback#", "fragment"),
        ("https://me@localhost:3000/callback", "user information"),
        ("https://me:pw@localhost:3000/callback", "user information"),
        ('https://localhost:3000/call"back', "printable ASCII"),
        ("https://localhost:3000/call back", "printable ASCII"),
        ("https://localhost:3000/call\\back", "printable ASCII"),
        ("https://localhost:3000/<script>", "printable ASCII"),
        ("https://localhost:3000/caf\u00e9", "printable ASCII"),
        ("https://localhost:3000/callback\n", "printable ASCII"),
        ("https://localhost:3000/" + "a" * 2048, "longer than 2048"),
        ("", "printable ASCII"),
        ("https://", "not an https URL"),
        ("https://[::1]/callback", "not an https URL"),
        ("https://localhost:99999/callback", "not an https URL"),
    ],
)
def test_refused_redirect_uris(uri, message):
    with pytest.raises(ClientError, match=message):
        check_client_uri(uri, POLICY)


@pytest.mark.parametrize(
    "uri", [APP, OTHER_APP, "https://localhost/cb?x=1&y=%22", "https://a.b.zhiva.ai/"]
)
def test_accepted_redirect_uris(uri):
    assert check_client_uri(uri, POLICY) == uri


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("a", True),
        ("My.App_2-x", True),
        ("x" * 64, True),
        ("", False),
        ("x" * 65, False),
        ("two words", False),
        ("app\n", False),
        ("\u0430pp", False),
        ("app/1", False),
        (None, False),
        (7, False),
    ],
)
def test_client_ids(value, valid):
    assert valid_client_id(value) is valid


def test_the_record():
    public = ClientRecord("a", None, (APP, OTHER_APP, APP + "/again"), ())
    assert public.is_public and not public.check_secret("")
    assert public.origins == {"https://localhost:3000", "https://viewer.zhiva.ai"}
    secret_client = ClientRecord("b", hash_secret("s3cret"), (APP,), ())
    assert not secret_client.is_public
    assert secret_client.check_secret("s3cret")
    assert not secret_client.check_secret("s3cret ") and not secret_client.check_secret("")
    assert not secret_client.check_secret("\udc80")  # any text is judged, never an exception


# --- the writer and the driver reader --------------------------------------------------


def test_added_clients_are_read_through_the_driver(db, database_url):
    public, confidential = client_id(), client_id()
    with db.session() as session:
        assert add_client(session, public, [APP, OTHER_APP, APP], [APP], False, POLICY) is None
        secret = add_client(session, confidential, [OTHER_APP], [], True, POLICY)
    assert isinstance(secret, str) and len(secret) >= 43
    table = ClientTable(database_url)
    assert table.find(public) == ClientRecord(public, None, (APP, OTHER_APP), (APP,))
    found = table.find(confidential)
    assert found is not None and found.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert found.check_secret(secret) and not found.check_secret(secret[:-1])
    assert found.origins == {"https://viewer.zhiva.ai"}
    assert table.find(public.upper()) is None  # client ids are case-sensitive (RFC 6749)
    assert table.find("nobody-" + public) is None
    assert table.find("not an id") is None
    assert table.ping() is True
    with db.session() as session:
        remove_client(session, public)
    assert table.find(public) is None
    table.close()


@pytest.mark.parametrize(
    ("column", "value"),
    [("redirect_uris", "not json"), ("redirect_uris", '{"a": 1}'), ("post_logout", "[1]")],
)
def test_a_malformed_row_is_no_client_and_a_log_line(db, database_url, caplog, column, value):
    name = client_id()
    with db.session() as session:
        add_client(session, name, [APP], [], False, POLICY)
        row = session.scalar(sa.select(OAuthClient).where(OAuthClient.client_id == name))
        if column == "redirect_uris":
            row.redirect_uris = value
        else:
            row.post_logout_redirect_uris = value
    table = ClientTable(database_url)
    with caplog.at_level(logging.WARNING, logger="zhiva"):
        assert table.find(name) is None
        assert caplog.text.count(f"oauth_clients row of {name!r} is malformed") == 1
        with db.session() as session:  # zhiva-admin clients list: left out, and said so
            assert name not in {client.client_id for client in list_clients(session)}
    assert caplog.text.count(f"oauth_clients row of {name!r} is malformed") == 2
    with db.session() as session:
        remove_client(session, name)  # still removable
    table.close()


def test_writer_refusals_leave_nothing(db, database_url):
    name = client_id()
    with db.session() as session:
        add_client(session, name, [APP], [], False, POLICY)
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"client_id": name}, "exists"),
        ({"client_id": VIEWER_CLIENT_ID}, "make up"),
        ({"redirect_uris": []}, "at least one redirect URI"),
        ({"post_logout_redirect_uris": ["http://localhost/"]}, "https://"),
    ]
    for change, message in refusals:
        arguments = {
            "client_id": client_id(),
            "redirect_uris": [OTHER_APP],
            "post_logout_redirect_uris": [],
            "confidential": True,
            "policy": POLICY,
            **change,
        }
        with pytest.raises(ClientError, match=message), db.session() as session:
            add_client(session, **arguments)
    with db.session() as session:
        with pytest.raises(ClientError, match="no client"):
            remove_client(session, "nobody-" + name)
        found = [c for c in list_clients(session) if c.client_id == name]
    assert found == [ClientRecord(name, None, (APP,), ())]


def test_the_readers_load_no_sqlalchemy(db, database_url):
    """The policy and login processes read clients as they read users (test_policy_users.py)."""
    name = client_id()
    with db.session() as session:
        add_client(session, name, [APP], [], False, POLICY)
    script = (
        "import json, sys\n"
        "from services.stores.clients import ClientTable\n"
        "from services.stores.users import UserTable\n"
        "table = ClientTable(sys.argv[1])\n"
        "found = table.find(sys.argv[2])\n"
        "table.close()\n"
        "print(json.dumps({'modules': sorted(sys.modules), 'origins': sorted(found.origins)}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, database_url, name],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    answer = json.loads(result.stdout)
    assert answer["origins"] == ["https://localhost:3000"]
    for package in ("sqlalchemy", "alembic", "flask", "authlib"):
        assert not [m for m in answer["modules"] if m.split(".")[0] == package], package


# --- the local viewer -------------------------------------------------------------------


def test_ensure_viewer_client_is_idempotent_and_follows_the_public_url(db, app_config):
    config = {**app_config, "DATABASE_URL": db.engine.url.render_as_string(False)}
    default = load_settings(config)
    moved = load_settings({**config, "PUBLIC_HOST": "pacs.example.org", "HTTPS_PORT": "443"})
    with db.session() as session:
        ensure_viewer_client(session, default)
    with db.session() as session:
        assert ensure_viewer_client(session, default) is False  # nothing to change
    viewer = ClientTable(config["DATABASE_URL"])
    assert viewer.find(VIEWER_CLIENT_ID) == ClientRecord(
        VIEWER_CLIENT_ID,
        None,
        ("https://localhost:8443/viewer/callback",),
        ("https://localhost:8443/viewer/",),
    )
    with db.session() as session:
        assert ensure_viewer_client(session, moved) is True
    assert viewer_uris(moved) == (
        ("https://pacs.example.org/viewer/callback",),
        ("https://pacs.example.org/viewer/",),
    )
    found = viewer.find(VIEWER_CLIENT_ID)
    assert found is not None and found.redirect_uris == viewer_uris(moved)[0]
    assert found.post_logout_redirect_uris == viewer_uris(moved)[1]
    assert found.origins == {"https://pacs.example.org"}
    # A secret someone gave it by hand goes again: the viewer is a public client.
    with db.session() as session:
        row = session.scalar(
            sa.select(OAuthClient).where(OAuthClient.client_id == VIEWER_CLIENT_ID)
        )
        row.secret_hash = hash_secret("x")
    with db.session() as session:
        assert ensure_viewer_client(session, moved) is True
        assert ensure_viewer_client(session, moved) is False
        rows = session.scalars(
            sa.select(OAuthClient).where(OAuthClient.client_id == VIEWER_CLIENT_ID)
        ).all()
    assert len(rows) == 1 and viewer.find(VIEWER_CLIENT_ID).is_public
    viewer.close()


def test_prepare_registers_the_viewer(app_config, capsys):
    """`make up` (natively and in the containers' set-up) runs infra.stack.prepare."""
    from infra.stack import prepare

    settings = load_settings({**app_config, "HTTPS_PORT": "9443"})
    prepare(settings)
    assert "registered the OpenID Connect client zhiva-viewer" in capsys.readouterr().out
    prepare(settings)
    assert "zhiva-viewer is registered" in capsys.readouterr().out
    viewer = ClientTable(settings.database_url)
    found = viewer.find(VIEWER_CLIENT_ID)
    assert found is not None and found.redirect_uris == ("https://localhost:9443/viewer/callback",)
    viewer.close()


# --- zhiva-admin clients ------------------------------------------------------------------


@pytest.fixture
def cli(app_config):
    """`zhiva-admin` in the environment `make up` leaves (as tests/test_token_cli.py runs it)."""
    env = {k: str(v) for k, v in app_config.items() if k != "TESTING"}
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(main, list(args), env=env)

    return run


def _listed(cli) -> list[dict[str, Any]]:
    result = cli("clients", "list")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_cli_public_and_confidential_clients(cli, app_config):
    public = cli(
        "clients", "add", "--client-id", "ohif", "--redirect-uri", APP,
        "--redirect-uri", OTHER_APP, "--post-logout-redirect-uri", "https://localhost:3000/",
    )  # fmt: skip
    assert public.exit_code == 0, public.output
    assert json.loads(public.stdout) == {"client_id": "ohif"}

    confidential = cli(
        "clients", "add", "--client-id", "notebook", "--redirect-uri", OTHER_APP, "--confidential"
    )
    assert confidential.exit_code == 0, confidential.output
    answer = json.loads(confidential.stdout)
    assert set(answer) == {"client_id", "client_secret"} and answer["client_id"] == "notebook"
    secret = answer["client_secret"]
    assert "shown only now" in confidential.stderr

    table = ClientTable(app_config["DATABASE_URL"])
    stored = table.find("notebook")
    assert stored is not None and stored.secret_hash == hash_secret(secret) != secret
    assert stored.check_secret(secret) and not stored.check_secret(secret.upper())
    assert not table.find("ohif").check_secret(secret)
    table.close()

    listing = cli("clients", "list")
    assert secret not in listing.output and hash_secret(secret) not in listing.output
    assert _listed(cli) == [
        {
            "client_id": "notebook",
            "type": "confidential",
            "redirect_uris": [OTHER_APP],
            "post_logout_redirect_uris": [],
        },
        {
            "client_id": "ohif",
            "type": "public",
            "redirect_uris": [APP, OTHER_APP],
            "post_logout_redirect_uris": ["https://localhost:3000/"],
        },
    ]

    removed = cli("clients", "remove", "ohif")
    assert removed.exit_code == 0 and "removed client ohif" in removed.output
    assert [c["client_id"] for c in _listed(cli)] == ["notebook"]
    again = cli("clients", "remove", "ohif")
    assert again.exit_code == 1 and "no client 'ohif'" in again.output


def test_cli_list_of_none(cli):
    result = cli("clients", "list")
    assert result.exit_code == 0 and result.stdout == ""
    assert "no clients registered" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--client-id", "ohif", "--redirect-uri", OTHER_APP), "'ohif' exists"),
        (("--client-id", "x", "--redirect-uri", "http://localhost:3000/cb"), "https://"),
        (("--client-id", "x", "--redirect-uri", "https://evil.example.com/cb"), "not allowed"),
        (("--client-id", "x", "--redirect-uri", APP + "#frag"), "fragment"),
        (("--client-id", "x", "--redirect-uri", "https://u@localhost:3000/"), "user information"),
        (("--client-id", "x", "--redirect-uri", APP + '"'), "printable ASCII"),
        (("--client-id", "x", "--redirect-uri", APP + " x"), "printable ASCII"),
        (("--client-id", "x", "--redirect-uri", APP + "\u00e9"), "printable ASCII"),
        (("--client-id", "x", "--redirect-uri", APP + "/" + "a" * 2048), "longer than 2048"),
        (("--client-id", "bad id", "--redirect-uri", APP), "not valid"),
        (("--client-id", "x" * 65, "--redirect-uri", APP), "not valid"),
        (("--client-id", VIEWER_CLIENT_ID, "--redirect-uri", APP), "make up"),
        (
            ("--client-id", "x", "--redirect-uri", APP, "--post-logout-redirect-uri", "http://a/"),
            "https://",
        ),
    ],
)
def test_cli_refusals(cli, args, message):
    assert cli("clients", "add", "--client-id", "ohif", "--redirect-uri", APP).exit_code == 0
    result = cli("clients", "add", *args, "--confidential")
    assert result.exit_code == 1, result.output
    assert message in result.output and "client_secret" not in result.output
    assert _listed(cli) == [
        {
            "client_id": "ohif",
            "type": "public",
            "redirect_uris": [APP],
            "post_logout_redirect_uris": [],
        }
    ]


def test_cli_needs_a_redirect_uri(cli):
    result = cli("clients", "add", "--client-id", "x")
    assert result.exit_code == 2 and "--redirect-uri" in result.output
    assert _listed(cli) == []


def test_cli_takes_allowed_origins_from_the_settings(app_config):
    env = {k: str(v) for k, v in app_config.items() if k != "TESTING"}
    uri = "https://viewer.example.org/callback"
    runner = CliRunner()
    refused = runner.invoke(
        main, ["clients", "add", "--client-id", "x", "--redirect-uri", uri], env=env
    )
    assert refused.exit_code == 1 and "ALLOWED_ORIGINS" in refused.output
    allowed = runner.invoke(
        main,
        ["clients", "add", "--client-id", "x", "--redirect-uri", uri],
        env={**env, "ALLOWED_ORIGINS": "https://viewer.example.org"},
    )
    assert allowed.exit_code == 0, allowed.output


def test_user_model_default_subjects_are_distinct(db):
    names = [f"u{i}-oidc-{uuid.uuid4().hex[:8]}" for i in range(3)]
    with db.session() as session:
        for name in names:
            session.add(
                User(
                    name=name,
                    username=name,
                    password_hash="x",
                    can_edit=False,
                    is_admin=False,
                    disabled=False,
                    token_generation=0,
                )
            )
    with db.session() as session:
        subjects = session.scalars(sa.select(User.subject).where(User.username.in_(names))).all()
    assert len(set(subjects)) == 3
