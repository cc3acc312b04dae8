"""File modes, and a stack started by root running as the system user `zhiva`.

Secrets (`.env`, the TLS and JWT private keys), STATE_DIR and the accounts database are
nobody's but the stack's: 0600 files, 0700 directories; when root starts the stack, the
service user reads the secrets (group `zhiva`, 0640) and cannot change them. Every
hostile row has a control twin, built the same way without the flaw, that is accepted.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from infra.render import Layout
from infra.setup import (
    SERVICE_USER,
    ServiceUser,
    SetupError,
    ensure_service_user,
    ensure_setup,
    share_secrets,
)
from infra.stack import StackError, give_state_dir, supervisord_pid, unreachable
from services.settings import load_settings
from services.stores.db import Database
from services.stores.schema import upgrade
from tests.conftest import ADMIN_PASSWORD
from tests.support.dicomweb import SyntheticInstance, access_token, bearer_session
from tests.support.processes import free_port
from tests.support.stack import Stack

as_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="only root's `make up` hands the stack to the system user"
)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def as_user(user: str, *command: str) -> subprocess.CompletedProcess[str]:
    """`command` run as `user`, without root's capabilities or groups."""
    entry = pwd.getpwnam(user)
    return subprocess.run(
        ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]
        + ["--", *command],
        capture_output=True,
        text=True,
        timeout=30,
    )


# ------------------------------------------------------------------ set-up: secrets


@pytest.fixture
def keys_only(config_dir: Path, tmp_path: Path) -> Path:
    """A CONFIG_DIR with the session's certificate and keys (0600) and no `.env` yet."""
    directory = tmp_path / "config"
    shutil.copytree(config_dir, directory, ignore=shutil.ignore_patterns(".env", ".*.lock"))
    for key in ("zhiva.key", "jwt_priv.pem", "dicom-ca.key"):
        (directory / key).chmod(0o600)
    return directory


def run_setup(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CONFIG_DIR", "STATE_DIR", "ADMIN_PASSWORD_HASH", "SECRET_KEY", "REDIS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ADMIN_PASSWORD", ADMIN_PASSWORD)
    ensure_setup(directory)


@pytest.mark.parametrize(
    "before",
    [
        pytest.param(0o644, id="hostile-0644-the-old-systems-env-carried-over"),
        pytest.param(0o604, id="hostile-0604-others-read"),
        pytest.param(0o660, id="hostile-0660-its-group-reads-and-writes"),
        pytest.param(0o600, id="control-0600"),
    ],
)
def test_an_env_file_others_may_read_is_made_private_and_said(
    keys_only, monkeypatch, capsys, before
):
    env_file = keys_only / ".env"
    # What the README's migration makes: the old system's origins, no secret yet.
    env_file.write_text("ZHIVA_AUTH_ALLOWED_ORIGINS=https://viewer.example.com\n")
    env_file.chmod(before)
    run_setup(keys_only, monkeypatch)
    assert mode_of(env_file) == 0o600
    text_after = env_file.read_text()
    assert "ZHIVA_AUTH_ALLOWED_ORIGINS=https://viewer.example.com" in text_after
    assert "SECRET_KEY=" in text_after and "ADMIN_PASSWORD_HASH=" in text_after
    said = [line for line in capsys.readouterr().out.splitlines() if "could be read" in line]
    if before == 0o600:
        assert said == []
    else:
        assert said == [
            f"setup: {env_file} could be read by others (mode {before:04o}): made it 0600, "
            "as every file that holds a secret"
        ]


@pytest.mark.parametrize("key", ["zhiva.key", "jwt_priv.pem"])
@pytest.mark.parametrize(
    "before",
    [
        pytest.param(0o644, id="hostile-0644-copied-from-the-old-system"),
        pytest.param(0o600, id="control-0600"),
    ],
)
def test_a_private_key_others_may_read_is_made_private(keys_only, monkeypatch, capsys, key, before):
    (keys_only / key).chmod(before)
    run_setup(keys_only, monkeypatch)
    assert mode_of(keys_only / key) == 0o600
    output = capsys.readouterr().out
    assert (f"{keys_only / key} could be read by others" in output) == (before != 0o600)


def test_a_new_setup_writes_every_secret_0600_and_public_files_0644(tmp_path, monkeypatch):
    run_setup(tmp_path / "config", monkeypatch)
    config = tmp_path / "config"
    for secret in (".env", "zhiva.key", "jwt_priv.pem"):
        assert mode_of(config / secret) == 0o600, secret
    for public in ("zhiva.crt", "trusted.crt", "jwt_pub.pem"):  # control: still readable
        assert mode_of(config / public) == 0o644, public


# ------------------------------------------------------------------ STATE_DIR, the database


@pytest.mark.parametrize(
    "before",
    [
        pytest.param(None, id="hostile-made-by-make-up"),
        pytest.param(0o755, id="hostile-existing-0755"),
        pytest.param(0o750, id="hostile-existing-0750"),
        pytest.param(0o700, id="control-existing-0700"),
    ],
)
def test_state_dir_and_its_directories_are_0700(tmp_path, before):
    state = tmp_path / "state"
    if before is not None:
        (state / "logs").mkdir(parents=True)
        state.chmod(before)
        (state / "logs").chmod(before)
    layout = Layout(state)
    layout.make_dirs()
    for directory in (state, layout.log_dir, layout.conf_dir, state / "redis", state / "orthanc"):
        assert mode_of(directory) == 0o700, directory


@pytest.mark.parametrize(
    "before",
    [
        pytest.param(None, id="hostile-made-by-the-migrations"),
        pytest.param(0o644, id="hostile-existing-0644"),
        pytest.param(0o600, id="control-existing-0600"),
    ],
)
def test_the_database_and_its_wal_are_0600(tmp_path, before):
    path = tmp_path / "zhiva.db"
    url = f"sqlite:///{path}"
    if before is not None:
        upgrade(url)
        for companion in tmp_path.glob("zhiva.db*"):
            companion.chmod(before)
    upgrade(url)
    database = Database(url)
    try:
        with database.session() as session:  # an open connection keeps the WAL and -shm
            assert session.scalar(text("SELECT count(*) FROM users")) == 0
            files = sorted(tmp_path.glob("zhiva.db*"))
            assert [f.name for f in files] == ["zhiva.db", "zhiva.db-shm", "zhiva.db-wal"]
            for companion in files:
                assert mode_of(companion) == 0o600, companion
    finally:
        database.engine.dispose()


# ------------------------------------------------------------------ root: handing over


@pytest.fixture
def service() -> ServiceUser:
    return ensure_service_user()


@as_root
def test_the_service_user_is_a_system_account_without_login(service):
    entry = pwd.getpwnam(SERVICE_USER)
    assert 0 < entry.pw_uid < 1000
    assert entry.pw_shell in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")
    assert not Path(entry.pw_dir).exists()


@as_root
@pytest.mark.parametrize(
    "owner",
    [
        pytest.param("service", id="hostile-env-belongs-to-the-service-user"),
        pytest.param("root", id="control-env-belongs-to-root"),
    ],
)
def test_secrets_are_shared_for_reading_only_and_never_from_the_service_users_files(
    keys_only, monkeypatch, service, owner
):
    run_setup(keys_only, monkeypatch)
    settings = load_settings({"CONFIG_DIR": keys_only}, require_secrets=False)
    if owner == "service":
        os.chown(settings.env_file, service.uid, service.gid)
        with pytest.raises(SetupError, match=r"belongs to zhiva.*chown root"):
            share_secrets(settings, service)
        assert mode_of(settings.tls_private_key) == 0o600  # nothing was shared
        return
    share_secrets(settings, service)
    for secret in (settings.env_file, settings.tls_private_key, settings.jwt_private_key):
        assert (secret.stat().st_uid, secret.stat().st_gid) == (0, service.gid), secret
        assert mode_of(secret) == 0o640, secret
    # The CA's key is for root's `make admin` alone: the services never read it.
    assert mode_of(keys_only / "dicom-ca.key") == 0o600


@as_root
@pytest.mark.parametrize(
    "content",
    [
        pytest.param({"passwd": "root:x:0:0"}, id="hostile-a-directory-not-the-stacks"),
        pytest.param({}, id="control-empty"),
        pytest.param({"zhiva.db": "", "conf/supervisord.conf": ""}, id="control-an-old-root-stack"),
    ],
)
def test_state_dir_is_given_to_the_service_user_only_when_it_is_the_stacks(
    tmp_path, service, content
):
    state = tmp_path / "state"
    state.mkdir()
    for name, body in content.items():
        (state / name).parent.mkdir(parents=True, exist_ok=True)
        (state / name).write_text(body)
        (state / name).chmod(0o644)
    settings = load_settings(
        {"CONFIG_DIR": tmp_path / "config", "STATE_DIR": state}, require_secrets=False
    )
    if "passwd" in content:
        with pytest.raises(StackError, match="holds files that are not the stack's"):
            give_state_dir(settings, service)
        assert (state / "passwd").stat().st_uid == 0
        return
    give_state_dir(settings, service)
    for path in [state, *state.rglob("*")]:
        assert (path.stat().st_uid, path.stat().st_gid) == (service.uid, service.gid), path
        assert mode_of(path) == (0o700 if path.is_dir() else 0o600), path


@pytest.fixture
def passable(tmp_path: Path) -> Iterator[Path]:
    """A directory the service user may pass through (pytest's own are root's alone)."""
    directory = Path(tempfile.mkdtemp(prefix="zhiva-files-test-"))
    directory.chmod(0o711)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@as_root
@pytest.mark.parametrize(
    "folder_mode",
    [pytest.param(0o700, id="hostile-root-only-folder"), pytest.param(0o711, id="control-0711")],
)
def test_make_up_names_the_directory_that_stops_the_service_user(
    keys_only, passable, service, monkeypatch, folder_mode
):
    run_setup(keys_only, monkeypatch)
    folder = passable / "folder"
    folder.mkdir(mode=0o700)
    config = folder / "config"
    shutil.copytree(keys_only, config)
    config.chmod(0o755)  # as `make setup` makes it
    folder.chmod(folder_mode)
    for secret in (".env", "zhiva.key", "jwt_priv.pem"):
        os.chown(config / secret, -1, service.gid)
        (config / secret).chmod(0o640)
    state = passable / "state"
    state.mkdir(mode=0o700)
    os.chown(state, service.uid, service.gid)
    settings = load_settings({"CONFIG_DIR": config, "STATE_DIR": state}, require_secrets=False)
    blocked = unreachable(settings, service)
    if folder_mode == 0o700:
        assert blocked and all(f"stopped at {folder} (drwx------)" in line for line in blocked)
        assert {line.split(" (")[0] for line in blocked} >= {str(config / ".env")}
    else:
        assert blocked == []


@as_root
@pytest.mark.parametrize(
    "owner",
    [
        pytest.param("service", id="hostile-written-by-the-service-user"),
        pytest.param("root", id="control-written-by-root"),
    ],
)
def test_make_down_signals_only_a_supervisord_of_the_pid_files_owner(tmp_path, service, owner):
    layout = Layout(tmp_path)
    layout.run_dir.mkdir()
    pid_file = layout.run_dir / "supervisord.pid"
    pid_file.write_text(f"{os.getpid()}\n")  # a live process of root's, as pid 1 would be
    if owner == "service":
        os.chown(pid_file, service.uid, service.gid)
        assert supervisord_pid(layout) is None
    else:
        assert supervisord_pid(layout) == os.getpid()


# ------------------------------------------------------------------ root: a running stack


def low_free_port(exclude: int = 0) -> int:
    """A free port below 1024 (only root may bind there), else any free port."""
    for port in range(990, 600, -1):
        with socket.socket() as probe:
            try:
                # Every interface: DICOM listens there, and it conflicts with loopback too.
                probe.bind(("0.0.0.0", port))  # noqa: S104
            except OSError:
                continue
        if port != exclude:
            return port
    return free_port()


@pytest.fixture(scope="module")
def root_stack(tmp_path_factory, output_dir) -> Iterator[Stack]:
    """A stack root starts, on ports below 1024 where they are free."""
    if os.geteuid() != 0:
        pytest.skip("only root's `make up` hands the stack to the system user")
    own = Stack.prepare(tmp_path_factory.mktemp("files"), ADMIN_PASSWORD, output_dir)
    https = low_free_port()
    own.env.update(HTTPS_PORT=str(https), DICOM_PORT=str(low_free_port(exclude=https)))
    own.up()
    try:
        yield own
    finally:
        own.down()


def process_tree(root_pid: int) -> dict[int, dict[str, str]]:
    """`root_pid` and its descendants: their /proc status fields and command line."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, pending = {}, [root_pid]
    while pending:
        pid = pending.pop()
        try:
            status = dict(
                line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            )
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        found[pid] = {**{k: v.strip() for k, v in status.items()}, "command": command}
        pending += children.get(pid, [])
    return found


PROCESS_KINDS = {
    "supervisord": "bin/supervisord",
    "redis": "redis-server",
    "orthanc": "/usr/sbin/Orthanc",
    "policy gunicorn master and workers": "zhiva-policy",
    "token gunicorn master and worker": "zhiva-token",
    "login gunicorn master and worker": "zhiva-login",
    "nginx master": "nginx: master process",
    "nginx workers": "nginx: worker process",
}


@pytest.mark.stack
@pytest.mark.parametrize("kind", PROCESS_KINDS)
def test_every_process_of_a_stack_root_started_runs_as_the_service_user(root_stack, kind):
    service = pwd.getpwnam(SERVICE_USER)
    supervisord = supervisord_pid(root_stack.layout)
    assert supervisord is not None
    tree = process_tree(supervisord)
    mine = [p for p in tree.values() if PROCESS_KINDS[kind] in p["command"]]
    minimum = 3 if kind.startswith("policy") else 2 if "worker" in kind else 1
    assert len(mine) >= minimum, f"{kind}: {len(mine)} found in {len(tree)} processes"
    low_ports = min(int(root_stack.env["HTTPS_PORT"]), int(root_stack.env["DICOM_PORT"])) < 1024
    for process in mine:
        # Real, effective, saved and file-system ids: none is root's.
        assert process["Uid"].split() == [str(service.pw_uid)] * 4, process["command"]
        assert process["Gid"].split() == [str(service.pw_gid)] * 4, process["command"]
        assert process["Groups"] == "", process["command"]
        assert process["NoNewPrivs"] == "1", process["command"]
        # Binding below 1024 is the one capability left, and only when a port needs it.
        assert int(process["CapEff"], 16) == (1 << 10 if low_ports else 0), process["command"]


@pytest.mark.stack
def test_the_stack_answers_on_its_ports_below_1024(root_stack):
    """Control twin of the above: the stack without root still serves where it was asked."""
    response = root_stack.http().get(f"{root_stack.base_url}/auth/healthz/token", timeout=10)
    assert response.status_code == 200


@pytest.mark.stack
@pytest.mark.parametrize("secret", [".env", "zhiva.key", "jwt_priv.pem"])
def test_the_service_user_reads_its_secrets_and_nobody_else_does(root_stack, secret):
    path = Path(root_stack.env["CONFIG_DIR"]) / secret
    assert (mode_of(path), path.stat().st_gid) == (0o640, pwd.getpwnam(SERVICE_USER).pw_gid)
    assert as_user(SERVICE_USER, "cat", str(path)).returncode == 0  # control
    assert as_user("nobody", "cat", str(path)).returncode != 0
    # What root's `make up` reads is not the service user's to change.
    appended = as_user(SERVICE_USER, "sh", "-c", f"echo STATE_DIR=/etc >> {path}")
    assert appended.returncode != 0 and "STATE_DIR=/etc" not in path.read_text()


@pytest.mark.stack
@pytest.mark.parametrize("public", ["zhiva.crt", "trusted.crt", "jwt_pub.pem"])
def test_public_files_stay_readable_by_anyone(root_stack, public):
    path = Path(root_stack.env["CONFIG_DIR"]) / public
    assert mode_of(path) == 0o644
    assert as_user("nobody", "cat", str(path)).returncode == 0


@pytest.mark.stack
def test_state_dir_the_database_and_what_the_programs_write_are_the_service_users(root_stack):
    service = pwd.getpwnam(SERVICE_USER)
    state = Path(root_stack.env["STATE_DIR"])
    editor = bearer_session(root_stack, access_token(root_stack, can_edit=True))
    stored = editor.post(
        f"{root_stack.base_url}/zhiva/instances",
        data=b"".join(SyntheticInstance(64, 64, 1).chunks()),
        headers={"Content-Type": "application/dicom"},
        timeout=60,
    )
    assert stored.status_code == 200, stored.text
    assert as_user("nobody", "ls", str(state)).returncode != 0
    assert as_user(SERVICE_USER, "ls", str(state)).returncode == 0  # control
    files = [state, *state.rglob("*")]
    storage = [p for p in (state / "orthanc" / "storage").rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert storage and {"zhiva.db", "zhiva.db-wal", "audit.log", "index"} <= names
    for path in files:
        if path.is_symlink() or stat.S_ISSOCK(path.lstat().st_mode):
            continue
        assert path.stat().st_uid == service.pw_uid, path
        assert mode_of(path) == (0o700 if path.is_dir() else 0o600), path


@pytest.mark.stack
def test_roots_writes_leave_the_database_to_the_service_user(root_stack):
    """`make admin` and the tests write the database as root; the services go on writing it."""
    service = pwd.getpwnam(SERVICE_USER)
    listed = root_stack.make("admin", ARGS="list-users")
    assert listed.returncode == 0
    root_stack.create_user(f"root-made-{uuid.uuid4().hex[:8]}", "Root-Made-Passw0rd!")
    state = Path(root_stack.env["STATE_DIR"])
    for name in ("zhiva.db", "zhiva.db-wal", "zhiva.db-shm"):
        assert (state / name).stat().st_uid == service.pw_uid, name
        assert mode_of(state / name) == 0o600, name
    made = root_stack.http().post(
        f"{root_stack.base_url}/auth/generate-token",
        json={
            "name": "Made By The Service",
            "username": f"service-made-{uuid.uuid4().hex[:8]}",
            "password": ADMIN_PASSWORD,
            "userPassword": "Service-Passw0rd!",
            "createUserIfNotExists": True,
        },
        timeout=60,
    )
    assert made.status_code == 200, made.text
