"""Shared fixtures: real Redis, real databases, a configured project directory, the whole stack.

Nothing here is faked: Redis is a redis-server of the tests' own, the
database is SQLite in a temporary directory or the machine's PostgreSQL in a
database made for this run, and `stack` starts nginx, Orthanc, Redis and the
three services under supervisord exactly as `make up` does. With
`--stack=containers` it is docker-compose.yml booted by `make up` with
MODE=docker, and only the tests marked `e2e` (those that reach the stack
where a user does) run.
"""

from __future__ import annotations

import gc
import os
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from infra.setup import ensure_setup
from services.settings import PROJECT_DIR
from services.stores.schema import upgrade
from tests.support.redis_server import RedisServer
from tests.support.stack import ContainerStack, Stack

ADMIN_PASSWORD = "Admin-Passw0rd!"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--stack",
        choices=("native", "containers"),
        default="native",
        help="which stack the `stack` fixture starts; `containers` runs the e2e tests only",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Native: every test but the container-only ones; containers: e2e and those."""
    if config.getoption("--stack") == "containers":
        markers = ("e2e", "containers")
        chosen = [item for item in items if any(item.get_closest_marker(m) for m in markers)]
    else:
        chosen = [item for item in items if not item.get_closest_marker("containers")]
    config.hook.pytest_deselected(items=[item for item in items if item not in chosen])
    items[:] = chosen


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """Collect garbage when each test ends, so a leaked socket or file (a ResourceWarning,
    an error under filterwarnings=error) is reported by the test that leaked it, not by
    whichever test happens to run when the collector next comes by."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """Where tests leave files for people to see (screenshots): TEST_OUTPUT_DIR or ./test-output."""
    directory = Path(os.environ.get("TEST_OUTPUT_DIR") or PROJECT_DIR / "test-output")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="session")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, output_dir: Path
) -> Iterator[Stack]:
    """nginx, Orthanc, Redis and the three services, started by `make up` on free ports."""
    kind = ContainerStack if request.config.getoption("--stack") == "containers" else Stack
    with kind.started(tmp_path_factory.mktemp("stack"), ADMIN_PASSWORD, output_dir) as running:
        yield running


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), secrets.token_hex(16))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CONFIG_DIR made by the real set-up: certificate, JWT keys, `.env`."""
    directory = tmp_path_factory.mktemp("config")
    saved = os.environ.get("ADMIN_PASSWORD")
    os.environ["ADMIN_PASSWORD"] = ADMIN_PASSWORD
    try:
        ensure_setup(directory)
    finally:
        if saved is None:
            del os.environ["ADMIN_PASSWORD"]
        else:
            os.environ["ADMIN_PASSWORD"] = saved
    return directory


@pytest.fixture
def app_config(config_dir: Path, redis_server: RedisServer, tmp_path: Path) -> dict[str, Any]:
    """Overrides for `create_app(config)`: a fresh SQLite database and Redis key prefix per test."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    database_url = f"sqlite:///{state_dir / 'zhiva.db'}"
    upgrade(database_url)
    return {
        "CONFIG_DIR": str(config_dir),
        "STATE_DIR": str(state_dir),
        "DATABASE_URL": database_url,
        "REDIS_PORT": redis_server.port,
        "REDIS_PASSWORD": redis_server.password,
        "REDIS_KEY_PREFIX": f"test-{uuid.uuid4().hex}:",
        "TESTING": True,
    }


@contextmanager
def new_postgres_database() -> Iterator[str]:
    """An empty PostgreSQL database on the machine's server (127.0.0.1:5432), dropped after."""
    import psycopg

    admin_url = os.environ.get(
        "TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name = f"zhiva_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this run's own."""
    with new_postgres_database() as url:
        yield url


@pytest.fixture
def own_postgres() -> Iterator[str]:
    """An empty PostgreSQL database of this test's own, for migrating up and down."""
    with new_postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of this test's own: SQLite, then PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'zhiva.db'}"
    return str(request.getfixturevalue("own_postgres"))
