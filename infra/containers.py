"""The stack as containers: `docker-compose.yml` run by Docker or Podman.

`make up` comes here when `MODE=docker`, or when MODE is unset and a container
engine answers; `MODE=native` keeps the supervisord stack (infra/stack.py).
The set-up (certificate, keys, `.env` in CONFIG_DIR) is the same step for both
and has run before anything here. Then:

1. the base image `debian:bookworm-slim` is pulled, or, where no registry can
   be reached, made with debootstrap from the machine's own Debian mirror;
2. the two images are built from `infra/docker/` (Debian's Orthanc, nginx and
   Redis; Debian's Python with the project installed), with the build host's
   extra CA certificates when `BUILD_CA_CERTS` names a PEM file;
3. compose starts the containers, and each is waited for by its own health
   check, then nginx through the published port.

What runs is recorded in `STATE_DIR/containers.json`, so `make down`,
`make status`, `make logs` and `make admin` find it again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.settings import PROJECT_DIR, Settings

from .console import say
from .render import COMPOSE_FILE, VENV_BIN, passed_knobs

BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
IMAGES = {"daemons": "zhiva-pacs/daemons", "services": "zhiva-pacs/services"}
DEFAULT_PROJECT = "zhiva-pacs"
RECORD_FILE = "containers.json"
# Services in the order they come up; the set-up container runs once before them.
SERVICES = ("redis", "orthanc", "policy", "token", "login", "nginx")
START_TIMEOUT = 180.0
# A build argument is one string in the build's environment: Linux caps it at 128 KiB.
MAX_CA_CERTS_BYTES = 100 * 1024
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"


class ContainerError(RuntimeError):
    """The container stack cannot do what was asked; the message says why."""


@dataclass(frozen=True)
class Engine:
    """A container engine that answers, and the compose command that drives it."""

    name: str  # "docker" or "podman"
    compose: tuple[str, ...]

    def run(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.name, *args], capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise ContainerError(
                f"`{self.name} {' '.join(args[:3])} …` failed: "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )
        return result


def _answers(command: Sequence[str]) -> bool:
    if shutil.which(command[0]) is None:
        return False
    try:
        return subprocess.run(command, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_engine() -> Engine | None:
    """Docker when its daemon answers (not merely its client), else Podman, else None."""
    if _answers(["docker", "info"]):
        if _answers(["docker", "compose", "version"]):
            return Engine("docker", ("docker", "compose"))
        if shutil.which("docker-compose"):
            return Engine("docker", ("docker-compose",))
    if _answers(["podman", "info"]):
        podman_compose = VENV_BIN / "podman-compose"
        command = str(podman_compose) if podman_compose.exists() else "podman-compose"
        if shutil.which(command):
            return Engine("podman", (command,))
    return None


def choose_mode(environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """`native` or `docker`: MODE when given, else `docker` when an engine answers."""
    mode = environ.get("MODE", "").strip().lower()
    if mode in ("native", "docker"):
        return mode
    if mode:
        raise ContainerError(f"MODE={mode!r}: use MODE=native or MODE=docker (or leave it unset)")
    return "docker" if find_engine() else "native"


def project_name(environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    name = environ.get("COMPOSE_PROJECT_NAME") or DEFAULT_PROJECT
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise ContainerError(
            f"COMPOSE_PROJECT_NAME={name!r}: use lower-case letters, digits, '-' and '_'"
        )
    return name


# --- the record of a running container stack ------------------------------------------


def record_path(settings: Settings) -> Path:
    return settings.state_dir / RECORD_FILE


def read_record(settings: Settings) -> dict[str, object] | None:
    try:
        return json.loads(record_path(settings).read_text())
    except FileNotFoundError:
        return None


def _write_record(settings: Settings, engine: Engine, project: str) -> None:
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = {"engine": engine.name, "project": project, "knobs": passed_knobs()}
    record_path(settings).write_text(json.dumps(record, indent=2) + "\n")


def recorded_engine(record: dict[str, object]) -> Engine:
    engine = find_engine()
    if engine is None or engine.name != record.get("engine"):
        raise ContainerError(
            f"the stack runs under {record.get('engine')}, which does not answer here"
        )
    return engine


# --- images ---------------------------------------------------------------------------


def _image_exists(engine: Engine, image: str) -> bool:
    return engine.run("image", "inspect", image, check=False).returncode == 0


def host_mirrors(sources_dir: Path = Path("/etc/apt")) -> tuple[str, str]:
    """The Debian mirror and security mirror this machine's own apt sources name."""
    mirror, security = DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR
    entries: list[tuple[str, list[str]]] = []
    for path in sorted(sources_dir.glob("sources.list.d/*.sources")):
        # deb822: blank-line separated stanzas with `URIs:` and `Suites:` fields.
        for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            fields = dict(
                (key.strip().lower(), value.strip())
                for key, _, value in (
                    line.partition(":") for line in stanza.splitlines() if ":" in line
                )
                if not key.startswith("#")
            )
            if "uris" in fields and "suites" in fields:
                entries.append((fields["uris"].split()[0], fields["suites"].split()))
    lists = [sources_dir / "sources.list", *sorted(sources_dir.glob("sources.list.d/*.list"))]
    for path in lists:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb":
                    entries.append((words[1], [words[2]]))
    for uri, suites in entries:
        if "bookworm" in suites:
            mirror = uri.rstrip("/")
        if "bookworm-security" in suites:
            security = uri.rstrip("/")
    return mirror, security


def _debian_sources(mirror: str, security: str) -> str:
    # What the official debian:bookworm-slim image carries, on this machine's mirrors.
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    return (
        f"Types: deb\nURIs: {mirror}\nSuites: bookworm bookworm-updates\n"
        f"Components: main\nSigned-By: {keyring}\n\n"
        f"Types: deb\nURIs: {security}\nSuites: bookworm-security\n"
        f"Components: main\nSigned-By: {keyring}\n"
    )


def ensure_base_image(engine: Engine) -> None:
    if _image_exists(engine, BASE_IMAGE):
        return
    say(f"pulling {BASE_IMAGE}")
    if engine.run("pull", BASE_IMAGE, check=False, timeout=600).returncode == 0:
        return
    mirror, security = host_mirrors()
    mirror = os.environ.get("DEBIAN_MIRROR") or mirror
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        raise ContainerError(
            f"{BASE_IMAGE} cannot be pulled here, and making it needs debootstrap run as "
            "root: install debootstrap and run `make up` as root once, or load the image "
            "into the engine yourself"
        )
    say(f"no registry answers: making {BASE_IMAGE} with debootstrap from {mirror} (about a minute)")
    with tempfile.TemporaryDirectory(prefix="zhiva-base-") as scratch:
        root = Path(scratch) / "root"
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(root), mirror],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if result.returncode != 0:
            raise ContainerError(f"debootstrap failed:\n{result.stdout[-2000:]}{result.stderr}")
        (root / "etc/apt/sources.list").unlink(missing_ok=True)
        (root / "etc/apt/sources.list.d/debian.sources").write_text(
            _debian_sources(mirror, security)
        )
        # Like the official image: no package lists or caches left in it.
        for cache in ("var/lib/apt/lists", "var/cache/apt/archives"):
            for path in (root / cache).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [engine.name, "import", "-", BASE_IMAGE],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise ContainerError(f"importing the base image failed: {imported.stderr.strip()}")
    say(f"made {BASE_IMAGE}")


def build_ca_certs(environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """The PEM text BUILD_CA_CERTS names (off by default): extra CAs the build must trust."""
    path = environ.get("BUILD_CA_CERTS", "")
    if not path:
        return ""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ContainerError(f"BUILD_CA_CERTS={path}: {error.strerror}") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ContainerError(f"BUILD_CA_CERTS={path}: no PEM certificate in it")
    if len(text.encode()) > MAX_CA_CERTS_BYTES:
        raise ContainerError(
            f"BUILD_CA_CERTS={path} is over {MAX_CA_CERTS_BYTES // 1024} KiB: name only the "
            "extra certificates (e.g. those in /usr/local/share/ca-certificates), not a "
            "whole bundle"
        )
    return text


def native_versions() -> str:
    """`pip freeze` of the native `.venv`: the services image installs the same versions."""
    pip = VENV_BIN / "pip"
    if not pip.exists():
        return ""
    result = subprocess.run(
        [str(pip), "freeze", "--exclude-editable", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.stdout if result.returncode == 0 else ""


def build_images(engine: Engine, log_dir: Path) -> None:
    ca_certs = build_ca_certs()
    versions = native_versions()
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, image in IMAGES.items():
        log = log_dir / f"build-{name}.log"
        say(f"building {image} (log: {log}; the first build downloads packages)")
        command = [engine.name, "build", "-f", f"infra/docker/{name}.Dockerfile", "-t", image]
        if ca_certs:
            command += ["--build-arg", f"BUILD_CA_CERTS={ca_certs}"]
        if name == "services" and versions:
            command += ["--build-arg", f"PIP_CONSTRAINTS={versions}"]
        started = time.monotonic()
        with log.open("w") as handle:
            process = subprocess.Popen(
                [*command, "."],
                cwd=PROJECT_DIR,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            assert process.stdout is not None
            for line in process.stdout:
                handle.write(line)
                # Progress: one line per build step, not the package managers' chatter.
                if re.match(r"(STEP \d+/\d+|Step \d+/\d+|#\d+ \[)", line):
                    say(f"  {line.strip()[:110]}")
            code = process.wait()
        if code != 0:
            raise ContainerError(
                f"building {image} failed; the end of {log}:\n    "
                + "\n    ".join(log.read_text().splitlines()[-15:])
            )
        say(f"  built {image} in {time.monotonic() - started:.0f}s")


# --- compose --------------------------------------------------------------------------


def compose_environment(settings: Settings, project: str) -> dict[str, str]:
    """The knobs docker-compose.yml reads, from the same settings the native stack uses."""
    environment = dict(os.environ)
    environment.update(
        CONFIG_DIR=str(settings.config_dir),
        HTTPS_PORT=str(settings.https_port),
        DICOM_PORT=str(settings.dicom_port),
        BIND_ADDRESS=settings.bind_address,
        PUBLIC_HOST=settings.public_host,
        COMPOSE_PROJECT_NAME=project,
    )
    # The stack's own STATE_DIR lives in a volume; the host's names nothing inside.
    environment.pop("STATE_DIR", None)
    return environment


def compose(
    engine: Engine, settings: Settings, project: str, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*engine.compose, "-p", project, "-f", str(COMPOSE_FILE), *args],
        cwd=PROJECT_DIR,
        env=compose_environment(settings, project),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def container_id(engine: Engine, project: str, service: str) -> str | None:
    result = engine.run(
        "ps",
        "-a",
        "--filter",
        f"label=com.docker.compose.project={project}",
        "--filter",
        f"label=com.docker.compose.service={service}",
        "--format",
        "{{.ID}}",
        check=False,
    )
    ids = result.stdout.split()
    return ids[0] if ids else None


def container_state(engine: Engine, container: str) -> tuple[str, str]:
    """(state, health): e.g. ("running", "healthy"), ("exited", "")."""
    result = engine.run(
        "inspect",
        "--format",
        "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
        container,
        check=False,
    )
    words = result.stdout.split()
    return (words[0] if words else "missing", words[1] if len(words) > 1 else "")


def healthy(engine: Engine, container: str) -> bool:
    if engine.name == "podman":
        # Podman runs health checks from systemd timers; without systemd nothing
        # runs them, so the check is run here (which also records its result).
        return engine.run("healthcheck", "run", container, check=False).returncode == 0
    return container_state(engine, container)[1] == "healthy"


def _logs_tail(engine: Engine, container: str | None, lines: int = 20) -> str:
    if container is None:
        return "(no container)"
    result = engine.run("logs", "--tail", str(lines), container, check=False)
    return "\n    ".join((result.stdout + result.stderr).splitlines()[-lines:])


def _wait_healthy(engine: Engine, project: str, service: str, deadline: float) -> None:
    """Until the service's container runs and its health check passes; past `deadline`,
    an error with the end of its log."""
    while True:
        container = container_id(engine, project, service)
        state = container_state(engine, container)[0] if container else "missing"
        if state == "running" and container and healthy(engine, container):
            return
        if time.monotonic() > deadline:
            say(" failed")
            raise ContainerError(
                f"{service} did not become healthy in {START_TIMEOUT:.0f}s (state: {state}); "
                f"its last log lines:\n    {_logs_tail(engine, container)}"
            )
        time.sleep(1)


def wait_ready(engine: Engine, project: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    for service in SERVICES:
        say(f"  waiting for {service:8}", end="")
        started = time.monotonic()
        _wait_healthy(engine, project, service, deadline)
        say(f" ready ({time.monotonic() - started:.1f}s)")


def check_published_ports_free(settings: Settings, in_use: Callable[[int], bool]) -> None:
    taken = [
        f"{name}={port}"
        for name, port in (("HTTPS_PORT", settings.https_port), ("DICOM_PORT", settings.dicom_port))
        if in_use(port)
    ]
    if taken:
        raise ContainerError(
            f"port(s) already in use: {', '.join(taken)}. Stop what uses them, or choose "
            "other ports (HTTPS_PORT/DICOM_PORT in the environment)"
        )


def up(
    settings: Settings, in_use: Callable[[int], bool], public_ready: Callable[[], bool]
) -> Engine:
    engine = find_engine()
    if engine is None:
        raise ContainerError(
            "MODE=docker, but neither Docker (its daemon) nor Podman answers here; "
            "start one, or run `MODE=native make up`"
        )
    project = project_name()
    if container_id(engine, project, "nginx"):
        # Run again (or after a reboot): compose starts what is stopped, changes nothing else.
        say(f"the container stack {project!r} exists; starting whatever of it is stopped")
    else:
        check_published_ports_free(settings, in_use)
    say(f"container mode: {engine.name}, compose by `{Path(engine.compose[0]).name}`")
    ensure_base_image(engine)
    build_images(engine, settings.state_dir / "logs")
    say(f"starting the containers (compose project {project})")
    result = compose(engine, settings, project, "up", "-d")
    _write_record(settings, engine, project)
    if result.returncode != 0:
        raise ContainerError(
            f"compose up failed:\n{(result.stderr or result.stdout).strip()[-3000:]}"
        )
    wait_ready(engine, project)
    say("  waiting for the published port", end="")
    deadline = time.monotonic() + 30
    while not public_ready():
        if time.monotonic() > deadline:
            raise ContainerError(
                f"nginx is healthy inside its container, but https://…:{settings.https_port} "
                "does not answer from this machine: is the port published?"
            )
        time.sleep(0.5)
    say(" ready")
    return engine


def down(settings: Settings, record: dict[str, object]) -> None:
    engine = recorded_engine(record)
    project = str(record["project"])
    say(f"stopping and removing the containers of {project!r} (the data volume stays)")
    result = compose(engine, settings, project, "down", timeout=300)
    if result.returncode != 0:
        raise ContainerError(f"compose down failed:\n{(result.stderr or result.stdout)[-3000:]}")
    record_path(settings).unlink(missing_ok=True)
    say(f"stopped; data stays in the volume {project}_state")


def status(settings: Settings, record: dict[str, object]) -> None:
    engine = recorded_engine(record)
    project = str(record["project"])
    for service in SERVICES:
        container = container_id(engine, project, service)
        answering = container is not None and healthy(engine, container)
        # Read after the check ran, so Podman's recorded health is this check's.
        state, health = container_state(engine, container) if container else ("missing", "")
        word = "up" if answering and state == "running" else "down"
        detail = f"{state}, {health}" if health else state
        say(f"{service:8} {word:5} container {container or '-'} ({detail})")


def logs(settings: Settings, record: dict[str, object], lines: int = 15) -> None:
    engine = recorded_engine(record)
    project = str(record["project"])
    say(f"container logs (`{engine.name} logs`); audit.log is in the volume {project}_state")
    for service in SERVICES:
        say(f"\n==> {service} <==")
        say("    " + _logs_tail(engine, container_id(engine, project, service), lines))


def run_in(settings: Settings, record: dict[str, object], service: str, argv: Sequence[str]) -> int:
    """Run a command in a service's container, standard streams passed through."""
    engine = recorded_engine(record)
    container = container_id(engine, str(record["project"]), service)
    if container is None:
        raise ContainerError(f"no {service} container is running")
    return subprocess.run([engine.name, "exec", "-i", container, *argv]).returncode


def restart_orthanc(settings: Settings, record: dict[str, object]) -> None:
    """Render Orthanc's configuration again and restart it (after `modalities add|remove`).

    The rendering runs in the token container: its settings are the ones the set-up
    container rendered with, and the state volume is where Orthanc reads them.
    """
    if run_in(settings, record, "token", ["python", "-m", "infra.stack", "render-orthanc"]) != 0:
        raise ContainerError("the token container could not render Orthanc's configuration")
    engine = recorded_engine(record)
    container = container_id(engine, str(record["project"]), "orthanc")
    if container is None:
        raise ContainerError("no orthanc container is running")
    say("restarting Orthanc to apply it", end="")
    # Podman refuses `restart` while a container it depends on is not running (the set-up
    # container, which exits once it has done its work); `start` runs that again first,
    # which is harmless: the set-up is idempotent and replaces files atomically.
    engine.run("stop", container, timeout=START_TIMEOUT)
    engine.run("start", container, timeout=START_TIMEOUT)
    _wait_healthy(engine, str(record["project"]), "orthanc", time.monotonic() + START_TIMEOUT)
    say(" ready")
