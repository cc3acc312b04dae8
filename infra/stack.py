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
import stat
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

from dotenv import dotenv_values

from services.settings import (
    DEFAULTS,
    PROJECT_DIR,
    Settings,
    SettingsError,
    load_settings,
)
from services.stores.db import Database
from services.stores.oauth_clients import ensure_viewer_client
from services.stores.schema import upgrade

from . import containers, viewer
from .console import say
from .containers import ContainerError
from .render import VENV_BIN, Layout, passed_knobs, programs, render_native
from .setup import ServiceUser, SetupError, ensure_service_user, share_secrets
from .viewer import ViewerError

START_TIMEOUT = 90.0
KNOBS_FILE = "knobs.json"
# The service user's processes get this PATH, not root's (which may name directories
# only root may enter, such as a pyenv under /root).
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class StackError(RuntimeError):
    """The stack cannot do what was asked; the message says why and where to look."""


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
    path = layout.run_dir / "supervisord.pid"
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
        # Run by the pid file's owner, or it is not this supervisord: root's `make down`
        # must not signal whatever pid the service user writes there.
        if _real_uid(pid) != path.stat().st_uid:
            return None
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    return pid


def _real_uid(pid: int) -> int | None:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return None


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
    # The viewer nginx serves at /viewer/: installed once per release, configured every time.
    viewer.prepare(settings)
    # `make status`/`down`/`logs` read these, so they describe the stack that runs,
    # not the defaults, when they are called without the knobs `make up` was given.
    (layout.conf_dir / KNOBS_FILE).write_text(json.dumps(passed_knobs(), indent=2) + "\n")
    say("applying database migrations")
    upgrade(settings.database_url)
    # The viewer's redirect URIs follow PUBLIC_HOST and HTTPS_PORT, so every `make up` checks them.
    database = Database(settings.database_url)
    try:
        with database.session() as session:
            changed = ensure_viewer_client(session, settings)
    finally:
        database.engine.dispose()
    say(
        "registered the OpenID Connect client zhiva-viewer"
        if changed
        else "the OpenID Connect client zhiva-viewer is registered"
    )


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
        if "DICOM_ACCEPT_ANY_STORE" in os.environ:
            # The containers read it from `.env` only (docker-compose.yml passes no such knob).
            say("note: DICOM_ACCEPT_ANY_STORE in the environment does not reach the containers")
            settings = load_settings(
                {"DICOM_ACCEPT_ANY_STORE": _env_file_value(settings, "DICOM_ACCEPT_ANY_STORE")}
            )
        containers.up(settings, _port_in_use, lambda: _nginx_answers(settings))
        _print_urls(settings, f"the volume {containers.project_name()}_state (`make logs`)")
        return
    install_system_packages()
    _check_ports_free(settings)
    start_supervisord = [str(VENV_BIN / "supervisord"), "-c", str(layout.supervisor_conf)]
    if os.geteuid() == 0:
        user = _hand_over(settings)
        # Rendered and migrated by the service user too: root writes nothing into the
        # directory that user owns, where a link it planted could lead root's writes.
        prepared = run_as(
            user, settings, [str(VENV_BIN / "python"), "-m", "infra.stack", "prepare"]
        )
        if prepared.returncode != 0:
            raise StackError("preparing the configuration failed (its error is above)")
        say(f"starting supervisord and the stack as {user.name}")
        result = run_as(user, settings, start_supervisord, capture=True)
    else:
        prepare(settings)
        say("starting supervisord and the stack")
        result = subprocess.run(start_supervisord, capture_output=True, text=True, umask=0o077)
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


def _hand_over(settings: Settings) -> ServiceUser:
    """Root's part of `make up`: the service user, STATE_DIR given to it, secrets it may read."""
    try:
        user = ensure_service_user()
        share_secrets(settings, user)
    except SetupError as problem:
        raise StackError(str(problem)) from None
    give_state_dir(settings, user)
    blocked = unreachable(settings, user)
    if blocked:
        raise StackError(
            f"{user.name}, the user the stack runs as when root starts it, cannot reach what it "
            "needs:\n  " + "\n  ".join(blocked) + "\nGive it passage through those directories "
            f"(setfacl -m u:{user.name}:x DIR, or chmod o+x DIR), or put the project, the Python "
            ".venv was made with, CONFIG_DIR and STATE_DIR where other users may enter (/opt)"
        )
    return user


def run_as(
    user: ServiceUser, settings: Settings, command: list[str], capture: bool = False
) -> subprocess.CompletedProcess[str]:
    """`command` as the service user, its files private (umask 077).

    No supplementary groups and no new privileges (setuid programs stay powerless). A
    port below the kernel's first unprivileged one needs CAP_NET_BIND_SERVICE, and
    only that capability, kept through exec for the programs that bind them.
    """
    low_port = min(settings.https_port, settings.dicom_port) < _unprivileged_port_start()
    capability = ["--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"]
    environment = {
        **os.environ,
        "HOME": user.home,
        "USER": user.name,
        "LOGNAME": user.name,
        "PATH": SERVICE_PATH,
    }
    return subprocess.run(
        ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups"]
        + ["--no-new-privs", *(capability if low_port else []), "--", *command],
        env=environment,
        umask=0o077,
        capture_output=capture,
        text=True,
    )


def _unprivileged_port_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def _looks_like_a_state_dir(state_dir: Path) -> bool:
    """Empty, or what `make up` leaves there (its configuration, or the database)."""
    return (
        not any(state_dir.iterdir())
        or (state_dir / "conf" / "supervisord.conf").is_file()
        or (state_dir / "zhiva.db").is_file()
    )


def give_state_dir(settings: Settings, user: ServiceUser) -> None:
    """STATE_DIR and everything in it to the service user: owner, mode 0700 (files 0600).

    A STATE_DIR already the user's keeps Orthanc's storage as it is (only Orthanc, as
    that user, writes there: a walk of a large archive at every start is spared).
    """
    state_dir = settings.state_dir.resolve()
    for other, name in (
        (settings.config_dir.resolve(), "CONFIG_DIR"),
        (PROJECT_DIR, "the project"),
    ):
        if other == state_dir or state_dir in other.parents:
            raise StackError(
                f"STATE_DIR={state_dir} holds {name}: as root, `make up` gives STATE_DIR to "
                f"{user.name}; choose a directory of its own (the default is ./var)"
            )
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if state_dir.stat().st_uid != user.uid and not _looks_like_a_state_dir(state_dir):
        raise StackError(
            f"STATE_DIR={state_dir} holds files that are not the stack's; as root, `make up` "
            f"gives STATE_DIR to {user.name}: choose an empty directory or the stack's own"
        )
    whole = state_dir.stat().st_uid != user.uid
    storage = state_dir / "orthanc" / "storage"
    for directory, subdirectories, files, directory_fd in os.fwalk(state_dir):
        if not whole and Path(directory) == storage:
            subdirectories[:] = []
            continue
        for name in subdirectories + files:
            _give(name, directory_fd, user)
    _give(str(state_dir), None, user)


def _give(name: str, directory_fd: int | None, user: ServiceUser) -> None:
    """Owner and mode of one entry, through a descriptor of the entry itself.

    The service user may swap an entry for a link between a look and a change; a
    change through the descriptor of what was looked at cannot be led elsewhere.
    """
    try:
        seen = os.stat(name, dir_fd=directory_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(seen.st_mode) or stat.S_ISDIR(seen.st_mode)):
        return  # links, sockets, fifos: nothing to give
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=directory_fd)
    except OSError:
        return
    try:
        status = os.fstat(fd)
        if (status.st_dev, status.st_ino) != (seen.st_dev, seen.st_ino):
            return
        if (status.st_uid, status.st_gid) != (user.uid, user.gid):
            os.fchown(fd, user.uid, user.gid)
        mode = stat.S_IMODE(status.st_mode)
        if mode & 0o077:
            os.fchmod(fd, mode & 0o700)
    finally:
        os.close(fd)


def unreachable(settings: Settings, user: ServiceUser) -> list[str]:
    """What the service user cannot read, each with the directory that stops it.

    Checked as that user (`test -r`/`-x` in a shell it runs), so ACLs count as well.
    """
    targets: list[tuple[Path, str, str]] = [
        (VENV_BIN / "python", "x", "the .venv's Python"),
        (PROJECT_DIR / "infra" / "gunicorn.conf.py", "r", "the project"),
        (settings.state_dir, "x", "STATE_DIR"),
    ]
    # `make` runs this module with the .venv's Python: its standard library is the one.
    standard_library = Path(sysconfig.get_path("stdlib")) / "os.py"
    targets.append((standard_library, "r", "the standard library of the .venv's Python"))
    for path in (
        settings.env_file,
        settings.tls_certificate,
        settings.tls_private_key,
        settings.trusted_certificates,
        settings.jwt_private_key,
        settings.jwt_public_key,
    ):
        targets.append((path, "r", "CONFIG_DIR"))
    chains = []
    for path, need, what in targets:
        steps = []
        for route in dict.fromkeys([path.absolute(), Path(os.path.realpath(path))]):
            steps += [f"x:{parent}" for parent in reversed(route.parents)]
            steps.append(f"{need}:{route}")
        chains.append((path, what, list(dict.fromkeys(steps))))
    checks = list(dict.fromkeys(step for _, _, steps in chains for step in steps))
    script = (
        'for c; do p=${c#?:}; if [ "${c%%:*}" = x ]; then [ -x "$p" ]; else [ -r "$p" ]; fi '
        '|| printf "%s\\n" "$c"; done'
    )
    result = run_as(user, settings, ["/bin/sh", "-c", script, "sh", *checks], capture=True)
    failed = set(result.stdout.splitlines())
    blocked = []
    for path, what, steps in chains:
        stop = next((step for step in steps if step in failed), None)
        if stop is not None:
            where = Path(stop[2:])
            mode = stat.filemode(where.stat().st_mode) if where.exists() else "missing"
            blocked.append(f"{path} ({what}): stopped at {where} ({mode})")
    return blocked


def _env_file_value(settings: Settings, name: str) -> str:
    """`name` as `.env` alone sets it (what the containers see), else its default."""
    value = dotenv_values(settings.env_file).get(name) if settings.env_file.exists() else None
    return value if value is not None else DEFAULTS[name]


def _print_urls(settings: Settings, state: str) -> None:
    base = settings.public_base_url
    say("")
    say("zhiva local PACS is up:")
    say(f"  admin page (make tokens)  {base}/auth/token")
    say(f"  sign-in for viewers       {base}/auth/sign-in")
    say(f"  Orthanc Explorer          {base}/zhiva/app/explorer.html?token=<auth token>")
    say(f"  OHIF viewer               {base}{viewer.BASE_PATH}")
    say(f"  DICOMweb root             {base}/zhiva/pacs/")
    say(
        f"  DICOM TLS                 AE {settings.dicom_aet}, port {settings.dicom_port}, "
        f"certificate {settings.trusted_certificates}"
    )
    say(f"  state and logs            {state}")
    if settings.dicom_accept_any_store:
        say("")
        say(
            f"WARNING: DICOM_ACCEPT_ANY_STORE=true: any AE that reaches DICOM port "
            f"{settings.dicom_port} may store studies (C-STORE) without being registered."
        )
        say(
            "         Remove the setting and run `make down && make up` to accept stores "
            'from registered modalities only (make admin ARGS="modalities list").'
        )


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
    """`zhiva-admin` on the running stack's database: natively, or in the token container.

    `modalities` runs here in both modes: its registry and the DICOM CA are in CONFIG_DIR,
    which only the set-up may write inside the containers. Orthanc reads the modalities
    from its configuration at start-up, so a change is rendered and Orthanc restarted.
    """
    record = containers.read_record(settings)
    if arguments[:1] == ["modalities"]:
        code = subprocess.run([str(VENV_BIN / "zhiva-admin"), *arguments]).returncode
        changes = arguments[1:2] in (["add"], ["remove"]) and "--help" not in arguments
        if code == 0 and changes:
            if record:
                containers.restart_orthanc(settings, record)
            else:
                _restart_orthanc(settings)
        return code
    if record:
        return containers.run_in(settings, record, "token", ["zhiva-admin", *arguments])
    return subprocess.run([str(VENV_BIN / "zhiva-admin"), *arguments]).returncode


def render_orthanc(settings: Settings) -> None:
    """Orthanc's configuration alone, rendered again (the modalities changed)."""
    render_native(settings, only=("orthanc.json",))


def _restart_orthanc(settings: Settings) -> None:
    layout = Layout(settings.state_dir)
    if supervisord_pid(layout) is None:
        say("the stack is not running: `make up` applies it")
        return
    if os.geteuid() == 0:
        # STATE_DIR is the service user's: it writes there, never root (see `up`).
        command = [str(VENV_BIN / "python"), "-m", "infra.stack", "render-orthanc"]
        if run_as(ensure_service_user(), settings, command).returncode != 0:
            raise StackError("rendering Orthanc's configuration failed (its error is above)")
    else:
        render_orthanc(settings)
    say("restarting Orthanc to apply it", end="")
    result = supervisorctl(layout, "restart", "orthanc")
    deadline = time.monotonic() + START_TIMEOUT
    url = f"http://127.0.0.1:{settings.orthanc_http_port}/system"
    while not _orthanc_answers(url):
        if "FATAL" in supervisorctl(layout, "status", "orthanc").stdout or (
            time.monotonic() > deadline
        ):
            say(" failed")
            tail = "\n    ".join(_tail(layout.log_dir / "orthanc.log", 8))
            raise StackError(
                f"Orthanc did not come back ({result.stdout.strip()}); the end of its log:"
                f"\n    {tail}"
            )
        time.sleep(0.3)
    say(" ready")


COMMANDS = {
    "up": up,
    "down": down,
    "status": status,
    "logs": logs,
    "prepare": prepare,
    "render-orthanc": render_orthanc,
}


def running_settings() -> Settings:
    """Settings of the stack in STATE_DIR as `make up` started it (its knobs recorded)."""
    settings = load_settings(require_secrets=False)
    knobs = Layout(settings.state_dir).conf_dir / KNOBS_FILE
    record = containers.read_record(settings)
    if record:
        knobs_used = record.get("knobs")
        return load_settings(
            knobs_used if isinstance(knobs_used, dict) else {}, require_secrets=False
        )
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
    except (SettingsError, StackError, ContainerError, ViewerError) as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
