"""Helpers to run real servers for the tests: free ports, waiting for readiness, gunicorn."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from services.settings import PROJECT_DIR

# The deployment's gunicorn settings, as supervisord passes them (infra/render.py).
GUNICORN_SETTINGS = PROJECT_DIR / "infra" / "gunicorn.conf.py"


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as error:  # noqa: BLE001 - retried until the deadline
            last_error = error
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s (last error: {last_error!r})")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def start_gunicorn(
    app: str,
    *,
    env: dict[str, str],
    log: IO[bytes],
    settings: Path = GUNICORN_SETTINGS,
    options: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """gunicorn serving `app` from the project directory with the deployment's settings
    (or `settings`), `options` on top; its output goes to `log`."""
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    return subprocess.Popen(
        [gunicorn, "--config", str(settings), *options, app],
        cwd=PROJECT_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
