"""The whole stack, started the way a user starts it (`make up`), in a temporary directory.

`Stack` is the native stack (`MODE=native`); `ContainerStack` is docker-compose.yml
booted by the same `make up` with `MODE=docker`, reached only where a user
reaches it: the published HTTPS and DICOM ports, and `make admin`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import struct
import subprocess
import sysconfig
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import redis
import requests

from infra.containers import container_id, find_engine
from infra.render import CONTAINER_STATE_DIR, VENV_BIN, Layout
from infra.setup import ServiceUser, ensure_service_user
from services.settings import PROJECT_DIR, Settings, load_settings
from services.stores.accounts import save_user
from services.stores.db import Database
from services.stores.models import User

from .processes import free_port

INTERNAL_PORTS = (
    "ORTHANC_HTTP_PORT",
    "TOKEN_SERVICE_PORT",
    "LOGIN_SERVICE_PORT",
    "POLICY_SERVICE_PORT",
    "REDIS_PORT",
)


# A POSIX ACL as Linux stores it in this extended attribute: a version, then entries of
# (tag, permissions, id); tags below, id only for named users and groups.
ACL_XATTR = "system.posix_acl_access"
ACL_VERSION = 2
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF
SEARCH = 0o1


def _blocks(user: ServiceUser, directory: Path) -> bool:
    """True when the service user may not enter `directory` (asked as that user)."""
    check = subprocess.run(
        ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups"]
        + ["--", "/bin/test", "-x", str(directory)],
        timeout=30,
    )
    return check.returncode != 0


def _allow_search(directory: Path, uid: int) -> None:
    """Add a named-user entry with search permission only to `directory`'s ACL."""
    try:
        raw = os.getxattr(directory, ACL_XATTR)
        entries = [struct.unpack_from("<HHI", raw, 4 + 8 * i) for i in range((len(raw) - 4) // 8)]
    except OSError:  # no ACL yet: the one the mode bits stand for
        mode = directory.stat().st_mode
        entries = [
            (ACL_USER_OBJ, (mode >> 6) & 7, ACL_UNDEFINED_ID),
            (ACL_GROUP_OBJ, (mode >> 3) & 7, ACL_UNDEFINED_ID),
            (ACL_OTHER, mode & 7, ACL_UNDEFINED_ID),
        ]
    named = {(tag, ident): perm for tag, perm, ident in entries}
    named[(ACL_USER, uid)] = named.get((ACL_USER, uid), 0) | SEARCH
    group = named[(ACL_GROUP_OBJ, ACL_UNDEFINED_ID)]
    named[(ACL_MASK, ACL_UNDEFINED_ID)] = named.get((ACL_MASK, ACL_UNDEFINED_ID), group) | SEARCH
    data = struct.pack("<I", ACL_VERSION) + b"".join(
        struct.pack("<HHI", tag, perm, ident) for (tag, ident), perm in sorted(named.items())
    )
    os.setxattr(directory, ACL_XATTR, data)


_passage_given = False


def give_service_user_passage() -> ServiceUser:
    """Let the service user reach the project and the Python its .venv was made with.

    As root, `make up` runs the stack as the service user and refuses to start when that
    user cannot reach them (infra/stack.py `unreachable`); here the .venv's Python may be
    a pyenv under /root (0700). The tests, run as root, deliberately give that user
    search permission (not read: it cannot list) on each directory that stops it, through
    an ACL entry naming it; nothing else changes, and it stays for later runs.
    """
    global _passage_given
    user = ensure_service_user()
    if _passage_given:
        return user
    targets = [
        Path(os.path.realpath(VENV_BIN / "python")),
        Path(sysconfig.get_path("stdlib")),
        PROJECT_DIR,
    ]
    for target in targets:
        for directory in reversed(target.parents):
            if _blocks(user, directory):
                _allow_search(directory, user.uid)
    _passage_given = True
    return user


def _service_home(root: Path) -> Path:
    """Where a stack that root starts keeps CONFIG_DIR and STATE_DIR.

    Root's `make up` hands the stack to the service user, who cannot enter pytest's
    temporary directories (0700, root's, and pytest makes them so again at every run).
    Such a stack lives in a directory of its own in the system's temporary directory,
    mode 0711 (the service user may pass, not list), reached from `root` by the link
    `files`, and removed when the test run ends.
    """
    home = Path(tempfile.mkdtemp(prefix=f"zhiva-{root.name}-"))
    home.chmod(0o711)
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)  # the bench passes a directory still to make
    link = root / "files"
    if not link.is_symlink():
        link.symlink_to(home)
    return home


_shared_viewer_dir: Path | None = None


def shared_viewer_dir() -> Path:
    """One VIEWER_DIR for every stack this test run starts: the OHIF release (50 MB from
    npm, 213 MB patched) is installed once per run, not once per stack.

    In the system's temporary directory (mode 0711: the service user may pass, not list),
    like `_service_home`; the directory itself belongs to whoever runs the stacks (the
    service user under root, whose stacks install into it), and goes when the run ends.
    """
    global _shared_viewer_dir
    if _shared_viewer_dir is None:
        home = Path(tempfile.mkdtemp(prefix="zhiva-viewer-"))
        home.chmod(0o711)
        atexit.register(shutil.rmtree, home, ignore_errors=True)
        releases = home / "viewer"
        releases.mkdir(mode=0o700)
        if os.geteuid() == 0:
            user = give_service_user_passage()
            os.chown(releases, user.uid, user.gid)
        _shared_viewer_dir = releases
    return _shared_viewer_dir


@dataclass
class Stack:
    root: Path
    admin_password: str
    output_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    # Clients handed out, closed at `down()` so no socket is left to the garbage collector.
    _clients: list[Any] = field(default_factory=list, repr=False)
    shares_the_viewer: ClassVar[bool] = True

    @classmethod
    def files_root(cls, root: Path) -> Path:
        """The directory of CONFIG_DIR and STATE_DIR: `root`, or, as root, `_service_home`."""
        if os.geteuid() != 0:
            return root
        give_service_user_passage()
        return _service_home(root)

    @classmethod
    def prepare(cls, root: Path, admin_password: str, output_dir: Path) -> Stack:
        """Choose free ports and directories; nothing runs yet."""
        files = cls.files_root(root)
        env = {
            key: value
            for key, value in os.environ.items()
            # The stack's own settings come from here alone.
            if key not in ("DATABASE_URL", "ALLOWED_ORIGINS", "ZHIVA_AUTH_ALLOWED_ORIGINS")
        }
        env.update(
            CONFIG_DIR=str(files / "config"),
            STATE_DIR=str(files / "state"),
            HTTPS_PORT=str(free_port()),
            DICOM_PORT=str(free_port()),
            ADMIN_PASSWORD=admin_password,
            # A machine with Docker or Podman would otherwise get containers.
            MODE="native",
        )
        if cls.shares_the_viewer:
            # Every stack of the run serves one installed release (its app-config.js is
            # its own, in STATE_DIR/viewer).
            env["VIEWER_DIR"] = str(shared_viewer_dir())
        env.update({name: str(free_port()) for name in INTERNAL_PORTS})
        return cls(root=root, admin_password=admin_password, output_dir=output_dir, env=env)

    @classmethod
    @contextmanager
    def started(cls, root: Path, admin_password: str, output_dir: Path) -> Iterator[Stack]:
        """`prepare` and `up`; `down` however the block ends (for fixtures)."""
        stack = cls.prepare(root, admin_password, output_dir)
        stack.up()
        try:
            yield stack
        finally:
            stack.down()

    def make(
        self, target: str, timeout: float = 300, **variables: str
    ) -> subprocess.CompletedProcess[str]:
        """Run a Makefile target as a user would, with this stack's environment."""
        assigned = [f"{name}={value}" for name, value in variables.items()]
        result = subprocess.run(
            ["make", "--no-print-directory", "-C", str(PROJECT_DIR), target, *assigned],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"make {target} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def up(self) -> subprocess.CompletedProcess[str]:
        return self.make("up")

    def down(self) -> subprocess.CompletedProcess[str]:
        self.close_clients()
        return self.make("down")

    def close_clients(self) -> None:
        while self._clients:
            client = self._clients.pop()
            if isinstance(client, Database):
                client.engine.dispose()
            else:
                client.close()

    @property
    def settings(self) -> Settings:
        return load_settings(
            {
                "CONFIG_DIR": self.env["CONFIG_DIR"],
                "STATE_DIR": self.env["STATE_DIR"],
                "HTTPS_PORT": self.env["HTTPS_PORT"],
                "DICOM_PORT": self.env["DICOM_PORT"],
                **({"VIEWER_DIR": self.env["VIEWER_DIR"]} if "VIEWER_DIR" in self.env else {}),
            }
        )

    @property
    def layout(self) -> Layout:
        return Layout(Path(self.env["STATE_DIR"]))

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.env['HTTPS_PORT']}"

    @property
    def orthanc_url(self) -> str:
        return f"http://127.0.0.1:{self.env['ORTHANC_HTTP_PORT']}"

    @property
    def ca_file(self) -> str:
        return str(Path(self.env["CONFIG_DIR"]) / "trusted.crt")

    def http(self) -> requests.Session:
        session = requests.Session()
        # Without this, REQUESTS_CA_BUNDLE from the environment would replace `verify`.
        session.trust_env = False
        session.verify = self.ca_file
        self._clients.append(session)
        return session

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(PROJECT_DIR / ".venv" / "bin" / "supervisorctl"),
                "-c",
                str(self.layout.supervisor_conf),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    @property
    def dicom_peer_address(self) -> str:
        """The address Orthanc sees for a modality on this machine (what to register)."""
        return "127.0.0.1"

    def audit_log(self) -> str:
        """The policy service's audit trail (one JSON line per decision it made)."""
        return (self.layout.log_dir / "audit.log").read_text()

    def redis(self) -> redis.Redis:
        client = redis.Redis.from_url(self.settings.redis_url, decode_responses=True)
        self._clients.append(client)
        return client

    def database(self) -> Database:
        database = Database(self.settings.database_url)
        self._clients.append(database)
        return database

    def create_user(
        self,
        username: str,
        password: str,
        *,
        name: str | None = None,
        can_edit: bool = False,
        is_admin: bool = False,
    ) -> User:
        with self.database().session() as session:
            return save_user(
                session,
                name=name or username,
                username=username,
                password=password,
                can_edit=can_edit,
                is_admin=is_admin,
            )


class NativeOnly(AssertionError):
    """A test reached inside the containers: it belongs to the native stack's tests only."""


@dataclass
class ContainerStack(Stack):
    """docker-compose.yml run by Docker or Podman: `make up` with MODE=docker."""

    # The containers install the viewer into their state volume, from their image.
    shares_the_viewer: ClassVar[bool] = False

    @classmethod
    def files_root(cls, root: Path) -> Path:
        return root  # CONFIG_DIR is mounted into the containers; their state is a volume

    @classmethod
    def prepare(cls, root: Path, admin_password: str, output_dir: Path) -> ContainerStack:
        stack = super().prepare(root, admin_password, output_dir)
        assert isinstance(stack, ContainerStack)
        stack.env.update(MODE="docker", COMPOSE_PROJECT_NAME=f"zhiva-test-{uuid.uuid4().hex[:8]}")
        # Inside the containers every internal port is the default; none is published.
        for name in INTERNAL_PORTS:
            del stack.env[name]
        return stack

    def up(self) -> subprocess.CompletedProcess[str]:
        # The first run builds the base image and both images: minutes, not seconds.
        return self.make("up", timeout=1500)

    def down(self) -> subprocess.CompletedProcess[str]:
        result = super().down()
        engine = find_engine()
        if engine is not None:  # the test run's data volume goes with it
            engine.run("volume", "rm", "-f", f"{self.env['COMPOSE_PROJECT_NAME']}_state")
        return result

    def create_user(
        self,
        username: str,
        password: str,
        *,
        name: str | None = None,
        can_edit: bool = False,
        is_admin: bool = False,
    ) -> User:
        """What `make admin ARGS="create-user …"` runs: zhiva-admin in the token container."""
        arguments = ["create-user", username, "--name", name or username, "--password-stdin"]
        arguments += ["--can-edit"] if can_edit else ["--read-only"]
        arguments += ["--admin"] if is_admin else []
        result = subprocess.run(
            [str(PROJECT_DIR / ".venv" / "bin" / "python"), "-m", "infra.stack", "admin"]
            + arguments,
            cwd=PROJECT_DIR,
            env=self.env,
            input=password + "\n",
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"create-user failed: {result.stdout}{result.stderr}")
        # `created <username>`: the name as the service stores it (normalised).
        return User(
            username=result.stdout.split()[-1],
            name=name or username,
            can_edit=can_edit,
            is_admin=is_admin,
            token_generation=0,
            disabled=False,
        )

    def container(self, service: str) -> str:
        """The id of the service's container (what `docker|podman exec/inspect` take)."""
        engine = find_engine()
        assert engine is not None, "no container engine answers"
        found = container_id(engine, self.env["COMPOSE_PROJECT_NAME"], service)
        assert found, f"no {service} container"
        return found

    @property
    def dicom_peer_address(self) -> str:
        # A connection from this machine to a published port reaches Orthanc from the
        # container network's gateway: the engine masquerades loopback traffic.
        gateway = self.engine(
            "inspect",
            self.container("network"),
            "--format",
            "{{range .NetworkSettings.Networks}}{{.Gateway}}{{end}}",
        ).stdout.strip()
        return gateway or "127.0.0.1"

    def engine(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        engine = find_engine()
        assert engine is not None, "no container engine answers"
        return engine.run(*args, check=check)

    def _inside(self, what: str) -> NativeOnly:
        return NativeOnly(f"{what} is inside the containers; such a test is native-only (no e2e)")

    @property
    def layout(self) -> Layout:
        raise self._inside("STATE_DIR")

    @property
    def orthanc_url(self) -> str:
        raise self._inside("Orthanc's HTTP port")

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        raise self._inside("supervisord")

    def audit_log(self) -> str:
        path = CONTAINER_STATE_DIR / "logs" / "audit.log"
        return self.engine("exec", self.container("policy"), "cat", str(path)).stdout

    def redis(self) -> redis.Redis:
        raise self._inside("Redis")

    def database(self) -> Database:
        raise self._inside("the database")
