"""`zhiva-admin`, the admin CLI: it loads settings as the services do and acts on their database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from services.admin.cli import main
from services.domain.passwords import STRONG_PASSWORD_RULE
from services.domain.tokens import TokenKind
from services.stores.accounts import find_user, identity
from services.token_service import create_app
from tests.support.apps import closing, signs_in

PASSWORD = "Cli-Passw0rd!"
NEW_PASSWORD = "Newer-Passw0rd!"


@pytest.fixture
def env(app_config) -> dict[str, str]:
    """The environment `make up` leaves: CONFIG_DIR, STATE_DIR, DATABASE_URL and so on."""
    return {k: str(v) for k, v in app_config.items() if k != "TESTING"}


@pytest.fixture
def cli(env):
    runner = CliRunner()

    def run(*args: str, password: str | None = None):
        return runner.invoke(
            main, list(args), env=env, input=None if password is None else password + "\n"
        )

    return run


@pytest.fixture
def app(app_config):
    with closing(create_app(app_config)) as app:
        yield app


def user(app, username: str):
    with app.extensions["zhiva"].db.session() as session:
        return find_user(session, username)


def test_create_list_and_authenticate(app, cli):
    result = cli(
        "create-user",
        "Ann",
        "--name",
        "Ann Example",
        "--can-edit",
        "--password-stdin",
        password=PASSWORD,
    )
    assert result.exit_code == 0, result.output
    assert "created ann" in result.output
    result = cli(
        "create-user", "root", "--name", "Root", "--admin", "--password-stdin", password=PASSWORD
    )
    assert result.exit_code == 0, result.output
    listing = cli("list-users")
    assert listing.exit_code == 0
    lines = listing.output.splitlines()
    assert lines[0].split()[:3] == ["USERNAME", "RIGHTS", "STATE"]
    assert lines[1].split()[:3] == ["ann", "edit", "enabled"] and lines[1].endswith("Ann Example")
    assert lines[2].split()[:3] == ["root", "admin", "enabled"]
    assert PASSWORD not in listing.output and "$2b$" not in listing.output
    with app.extensions["zhiva"].db.session() as session:
        assert signs_in(session, "ann", PASSWORD).can_edit


def test_create_user_prompts_for_the_password_twice(app, cli):
    result = cli("create-user", "ann", "--name", "Ann", password=f"{PASSWORD}\n{PASSWORD}")
    assert result.exit_code == 0, result.output
    assert STRONG_PASSWORD_RULE in result.output and PASSWORD not in result.output
    with app.extensions["zhiva"].db.session() as session:
        assert not signs_in(session, "ann", PASSWORD).can_edit  # --read-only by default


@pytest.mark.parametrize(
    ("args", "password", "message"),
    [
        (("create-user", "ann", "--name", "Ann", "--password-stdin"), "weak", STRONG_PASSWORD_RULE),
        (
            ("create-user", "two words", "--name", "Ann", "--password-stdin"),
            PASSWORD,
            "username not valid",
        ),
        (("create-user", "ann", "--name", " ", "--password-stdin"), PASSWORD, "Name not valid"),
        (("create-user", "ann", "--name", "Ann", "--password-stdin"), "", "no password"),
        (("reset-password", "nobody", "--password-stdin"), PASSWORD, "no user 'nobody'"),
        (("disable-user", "nobody"), None, "User doesn't exists"),
        (("enable-user", "nobody"), None, "User doesn't exists"),
        (("revoke-tokens", "nobody"), None, "User doesn't exists"),
    ],
)
def test_refusals(app, cli, args, password, message):
    result = cli(*args, password=password)
    assert result.exit_code == 1
    assert message in result.output
    assert user(app, "ann") is None


def test_create_refuses_an_existing_username(cli):
    assert (
        cli("create-user", "ann", "--name", "Ann", "--password-stdin", password=PASSWORD).exit_code
        == 0
    )
    result = cli("create-user", "ANN", "--name", "Ann", "--password-stdin", password=PASSWORD)
    assert result.exit_code == 1 and "exists; use reset-password" in result.output


def test_reset_disable_enable_and_revoke_stop_old_tokens(app, cli):
    assert (
        cli("create-user", "ann", "--name", "Ann", "--password-stdin", password=PASSWORD).exit_code
        == 0
    )
    client = app.test_client()
    codec = app.extensions["zhiva"].codec

    def auth_token() -> str:
        return codec.issue(TokenKind.AUTH, identity(user(app, "ann")))[0]

    def redeem(token: str) -> int:
        return client.post(
            "/auth/generate-access-token", headers={"Authorization": f"Bearer {token}"}
        ).status_code

    before = auth_token()
    result = cli("reset-password", "ann", "--password-stdin", password=NEW_PASSWORD)
    assert result.exit_code == 0 and "its tokens are revoked" in result.output
    assert redeem(before) == 403
    with app.extensions["zhiva"].db.session() as session:
        assert signs_in(session, "ann", PASSWORD) is None
        assert signs_in(session, "ann", NEW_PASSWORD) is not None

    kept = auth_token()
    assert (
        cli(
            "reset-password", "ann", "--keep-tokens", "--password-stdin", password=PASSWORD
        ).exit_code
        == 0
    )
    assert user(app, "ann").token_generation == 1

    refresh = codec.issue(TokenKind.REFRESH, identity(user(app, "ann")))[0]
    assert cli("revoke-tokens", "ann").exit_code == 0
    assert user(app, "ann").token_generation == 2
    assert redeem(kept) == 403
    assert (
        client.post(
            "/auth/refresh-token", headers={"Authorization": f"Bearer {refresh}"}
        ).status_code
        == 403
    )

    pending = auth_token()
    result = cli("disable-user", "ann")
    assert result.exit_code == 0 and "disabled ann" in result.output
    assert user(app, "ann").disabled and user(app, "ann").token_generation == 3
    assert "disabled" in cli("list-users").output
    assert redeem(pending) == 403
    with app.extensions["zhiva"].db.session() as session:
        assert signs_in(session, "ann", PASSWORD) is None

    assert cli("enable-user", "ann").exit_code == 0
    assert not user(app, "ann").disabled
    assert redeem(pending) == 403  # enabling does not bring old tokens back
    assert redeem(auth_token()) == 200


def test_cli_without_configuration_says_what_to_do(tmp_path):
    result = CliRunner().invoke(
        main,
        ["list-users"],
        env={
            "CONFIG_DIR": str(tmp_path),
            "ADMIN_PASSWORD_HASH": "",
            "SECRET_KEY": "",
            "REDIS_PASSWORD": "",
        },
    )
    assert result.exit_code == 1
    assert "missing" in result.output and "make setup" in result.output


def test_cli_on_a_database_without_schema_says_what_to_do(env, tmp_path):
    result = CliRunner().invoke(
        main, ["list-users"], env={**env, "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    )
    assert result.exit_code == 1 and "make up" in result.output


def test_installed_entry_point(env):
    executable = Path(sys.executable).with_name("zhiva-admin")
    result = subprocess.run(
        [str(executable), "list-users"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no users"
