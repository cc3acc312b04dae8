"""The whole stack, started the way a user starts it (`make up`), in a temporary directory.

`Stack` is the native stack (`MODE=native`); `ContainerStack` is docker-compose.yml
booted by the same `make up` with `MODE=docker`, reached only where a user
reaches it: the published HTTPS and DICOM ports, and `make admin`.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

from infra.containers import container_id, find_engine
from infra.render import CONTAINER_STATE_DIR, Layout
from services.shared.accounts import save_user
from services.shared.db import Database
from services.shared.models import User
from services.shared.settings import PROJECT_DIR, Settings, load_settings

from .processes import free_port

INTERNAL_PORTS = (
    "ORTHANC_HTTP_PORT",
    "TOKEN_SERVICE_PORT",
    "LOGIN_SERVICE_PORT",
    "POLICY_SERVICE_PORT",
    "REDIS_PORT",
)


@dataclass
class Stack:
    root: Path
    admin_password: str
    output_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    # Clients handed out, closed at `down()` so no socket is left to the garbage collector.
    _clients: list[Any] = field(default_factory=list, repr=False)

    @classmethod
    def prepare(cls, root: Path, admin_password: str, output_dir: Path) -> Stack:
        """Choose free ports and directories; nothing runs yet."""
        env = {
            key: value
            for key, value in os.environ.items()
            # The stack's own settings come from here alone.
            if key not in ("DATABASE_URL", "ALLOWED_ORIGINS", "ZHIVA_AUTH_ALLOWED_ORIGINS")
        }
        env.update(
            CONFIG_DIR=str(root / "config"),
            STATE_DIR=str(root / "state"),
            HTTPS_PORT=str(free_port()),
            DICOM_PORT=str(free_port()),
            ADMIN_PASSWORD=admin_password,
            # A machine with Docker or Podman would otherwise get containers.
            MODE="native",
        )
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
