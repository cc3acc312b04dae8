"""Run the stack: `up`, `down`, `status`, `logs`, `admin`.

`make up` calls `up` after the set-up. The stack runs natively under
supervisord (`MODE=native`, and the default where no container engine
answers) or as containers (`MODE=docker`, and the default where Docker or
Podman answers; infra/containers.py). Every step says what it does, and a
failure names the component and the log to read.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from services.shared.schema import upgrade
from services.shared.settings import Settings, SettingsError, load_settings

from . import containers
from .containers import ContainerError
from .render import VENV_BIN, Layout, passed_knobs, programs, render_native

START_TIMEOUT = 90.0
KNOBS_FILE = "knobs.json"


class StackError(RuntimeError):
    """The stack cannot do what was asked; the message says why and where to look."""


def say(message: str, end: str = "\n") -> None:
    print(message, end=end, flush=True)


def supervisorctl(
    layout: Layout, *args: str, check: bool = False
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "supervisorctl"), "-c", str(layout.supervisor_conf), *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


def supervisord_pid(layout: Layout) -> int | None:
    """The pid of this STATE_DIR's supervisord when it is alive."""
    try:
        pid = int((layout.run_dir / "supervisord.pid").read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    return pid


def _port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def _check_ports_free(settings: Settings) -> None:
    ports = {
        "HTTPS_PORT": settings.https_port,
        "DICOM_PORT": settings.dicom_port,
        "ORTHANC_HTTP_PORT": settings.orthanc_http_port,
        "TOKEN_SERVICE_PORT": settings.token_service_port,
        "LOGIN_SERVICE_PORT": settings.login_service_port,
        "POLICY_SERVICE_PORT": settings.policy_service_port,
        "REDIS_PORT": settings.redis_port,
    }
    if len(set(ports.values())) != len(ports):
        raise StackError(f"two settings name the same port: {ports}")
    taken = [f"{name}={port}" for name, port in ports.items() if _port_in_use(port)]
    if taken:
        raise StackError(
            f"port(s) already in use: {', '.join(taken)}. Stop what uses them, or choose "
            "other ports (HTTPS_PORT/DICOM_PORT in the environment, internal ports in .env)"
        )


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310
            return response.status == 200
    except urllib.error.HTTPError:
        return False
    except OSError:
        return False


def _orthanc_answers(url: str) -> bool:
    # Any HTTP answer means Orthanc is serving; without a token it is a 403.
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _nginx_answers(settings: Settings) -> bool:
    tls = ssl.create_default_context(cafile=str(settings.trusted_certificates))
    base = f"https://127.0.0.1:{settings.https_port}"
    # nginx listens on BIND_ADDRESS; 0.0.0.0 includes loopback, a LAN address does not.
    if settings.bind_address not in ("127.0.0.1", "0.0.0.0", "localhost"):  # noqa: S104
        base = f"https://{settings.bind_address}:{settings.https_port}"
    tls.check_hostname = False  # we reach it by IP; the certificate itself is verified
    return _http_ok(f"{base}/auth/healthz/token", tls)


def readiness_checks(settings: Settings) -> list[tuple[str, object]]:
    return [
        ("redis", lambda: _port_in_use(settings.redis_port)),
        (
            "orthanc",
            lambda: _orthanc_answers(f"http://127.0.0.1:{settings.orthanc_http_port}/system"),
        ),
        ("policy", lambda: _http_ok(f"http://127.0.0.1:{settings.policy_service_port}/healthz")),
        ("token", lambda: _http_ok(f"http://127.0.0.1:{settings.token_service_port}/healthz")),
        ("login", lambda: _http_ok(f"http://127.0.0.1:{settings.login_service_port}/healthz")),
        ("nginx", lambda: _nginx_answers(settings)),
    ]


def _wait_ready(settings: Settings, layout: Layout) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    for name, check in readiness_checks(settings):
        say(f"  waiting for {name:8}", end="")
        started = time.monotonic()
        log = layout.log_dir / f"{name}.log"
        while not check():  # type: ignore[operator]
            gave_up = "FATAL" in supervisorctl(layout, "status", name).stdout
            if gave_up or time.monotonic() > deadline:
                say(" failed")
                tail = "\n    ".join(_tail(log, 8)) if log.exists() else "(no log)"
                raise StackError(
                    f"{name} did not become ready"
                    + (" (it keeps exiting)" if gave_up else f" in {START_TIMEOUT:.0f}s")
                    + f"; the end of {log}:\n    {tail}"
                )
            time.sleep(0.3)
        say(f" ready ({time.monotonic() - started:.1f}s)")


def prepare(settings: Settings) -> None:
    """Render the configuration and migrate the database (the containers' set-up runs this too)."""
    layout = Layout(settings.state_dir)
    say(f"rendering configuration into {layout.conf_dir}")
    render_native(settings)
    # `make status`/`down`/`logs` read these, so they describe the stack that runs,
    # not the defaults, when they are called without the knobs `make up` was given.
    (layout.conf_dir / KNOBS_FILE).write_text(json.dumps(passed_knobs(), indent=2) + "\n")
    say("applying database migrations")
    upgrade(settings.database_url)


def install_system_packages() -> None:
    """The native stack's Debian packages (Orthanc, nginx, Redis), when missing."""
    script = Path(__file__).resolve().parent / "install-system-packages.sh"
    if subprocess.run([str(script)]).returncode != 0:
        raise StackError(f"{script} could not install the Debian packages the stack needs")


def up(settings: Settings) -> None:
    layout = Layout(settings.state_dir)
    if supervisord_pid(layout):
        say(f"the stack is already running (STATE_DIR={settings.state_dir}); `make down` stops it")
        status(settings)
        return
    if containers.choose_mode() == "docker":
        containers.up(settings, _port_in_use, lambda: _nginx_answers(settings))
        _print_urls(settings, f"the volume {containers.project_name()}_state (`make logs`)")
        return
    install_system_packages()
    _check_ports_free(settings)
    prepare(settings)
    say("starting supervisord and the stack")
    result = subprocess.run(
        [str(VENV_BIN / "supervisord"), "-c", str(layout.supervisor_conf)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise StackError(
            f"supervisord did not start: {result.stderr.strip() or result.stdout.strip()}"
        )
    try:
        _wait_ready(settings, layout)
    except StackError:
        say(supervisorctl(layout, "status").stdout)
        raise
    _print_urls(settings, str(settings.state_dir))


def _print_urls(settings: Settings, state: str) -> None:
    base = settings.public_base_url
    say("")
    say("zhiva local PACS is up:")
    say(f"  admin page (make tokens)  {base}/auth/token")
    say(f"  sign-in for viewers       {base}/auth/sign-in")
    say(f"  Orthanc Explorer          {base}/zhiva/app/explorer.html?token=<auth token>")
    say(f"  DICOMweb root             {base}/zhiva/pacs/")
    say(
        f"  DICOM TLS                 AE {settings.dicom_aet}, port {settings.dicom_port}, "
        f"certificate {settings.trusted_certificates}"
    )
    say(f"  state and logs            {state}")


def down(settings: Settings) -> None:
    record = containers.read_record(settings)
    if record:
        containers.down(settings, record)
        return
    layout = Layout(settings.state_dir)
    pid = supervisord_pid(layout)
    if pid is None:
        say(f"the stack is not running (STATE_DIR={settings.state_dir})")
        return
    say("stopping the stack")
    supervisorctl(layout, "shutdown")
    deadline = time.monotonic() + 60
    while supervisord_pid(layout) and time.monotonic() < deadline:
        time.sleep(0.2)
    if supervisord_pid(layout):
        os.kill(pid, signal.SIGTERM)
        raise StackError(f"supervisord (pid {pid}) did not stop within 60s; sent it SIGTERM")
    say("stopped; data stays in " + str(settings.state_dir))


def status(settings: Settings) -> None:
    record = containers.read_record(settings)
    if record:
        containers.status(settings, record)
        return
    layout = Layout(settings.state_dir)
    running = supervisord_pid(layout) is not None
    states: dict[str, str] = {}
    if running:
        for line in supervisorctl(layout, "status").stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                states[parts[0]] = parts[1]
    for program in programs(settings):
        state = states.get(program.name, "STOPPED")
        word = "up" if state == "RUNNING" else "down"
        say(
            f"{program.name:8} {word:5} {program.address}"
            + ("" if word == "up" else f" ({state.lower()})")
        )


def logs(settings: Settings, lines: int = 15) -> None:
    record = containers.read_record(settings)
    if record:
        containers.logs(settings, record, lines)
        return
    layout = Layout(settings.state_dir)
    say(f"logs are in {layout.log_dir}")
    names = [f"{p.name}.log" for p in programs(settings)] + [
        "nginx-error.log",
        "nginx-access.log",
        "audit.log",
        "supervisord.log",
    ]
    for name in names:
        path = layout.log_dir / name
        if not path.exists():
            continue
        say(f"\n==> {path} <==")
        say("\n".join(_tail(path, lines)))


def _tail(path: Path, lines: int) -> list[str]:
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 64 * 1024))
        return handle.read().decode(errors="replace").splitlines()[-lines:]


def admin(settings: Settings, arguments: list[str]) -> int:
    """`zhiva-admin` on the running stack's database: natively, or in the token container."""
    record = containers.read_record(settings)
    if record:
        return containers.run_in(settings, record, "token", ["zhiva-admin", *arguments])
    return subprocess.run([str(VENV_BIN / "zhiva-admin"), *arguments]).returncode


COMMANDS = {"up": up, "down": down, "status": status, "logs": logs, "prepare": prepare}


def running_settings() -> Settings:
    """Settings of the stack in STATE_DIR as `make up` started it (its knobs recorded)."""
    settings = load_settings(require_secrets=False)
    knobs = Layout(settings.state_dir).conf_dir / KNOBS_FILE
    record = containers.read_record(settings)
    if record:
        return load_settings(dict(record.get("knobs") or {}), require_secrets=False)
    if not knobs.exists():
        return settings
    return load_settings(json.loads(knobs.read_text()), require_secrets=False)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    if command not in (*COMMANDS, "admin") or (command != "admin" and len(argv) != 1):
        print(f"usage: python -m infra.stack {{{'|'.join(COMMANDS)}|admin ARGS…}}", file=sys.stderr)
        return 2
    try:
        # Only `up` needs the secrets; stopping or looking at a stack must work without them.
        if command in ("up", "prepare"):
            settings = load_settings()
        else:
            settings = running_settings()
        if command == "admin":
            return admin(settings, argv[1:])
        result = COMMANDS[command](settings)
    except (SettingsError, StackError, ContainerError) as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
