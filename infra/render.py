"""Render the stack's configuration from one settings source.

nginx, Orthanc, Redis and supervisord configuration for the native stack go to
`STATE_DIR/conf/`; `docker-compose.yml` (the same topology as containers) is
rendered from the same settings into the project directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from infra.dicom_ca import ca_certificate_path, orthanc_modalities
from infra.viewer import BASE_PATH as VIEWER_PATH
from infra.viewer import viewer_files
from services.access.paths import PACS_PREFIX
from services.access.permissions import (
    METHOD_OVERRIDE_QUERY,
    SHARED_READ_CLASS,
    SHARED_READ_METHODS,
    SHARED_READ_PATH,
    STUDY_CLASS_PREFIX,
    STUDY_READ_PATH,
)
from services.domain.origins import origin_regex
from services.settings import (
    AUTH_MAX_BODY,
    DEFAULTS,
    PROJECT_DIR,
    Settings,
    load_settings,
)

TEMPLATES = Path(__file__).resolve().parent / "templates"
PLUGIN_SCRIPT = Path(__file__).resolve().parent / "orthanc" / "plugin.py"
VENV_BIN = PROJECT_DIR / ".venv" / "bin"
# Knobs passed to every program, so services see what `make up` was given.
PASSED_KNOBS = (
    "HTTPS_PORT",
    "DICOM_PORT",
    "BIND_ADDRESS",
    "PUBLIC_HOST",
    "DATABASE_URL",
    "DICOM_ACCEPT_ANY_STORE",
)


@dataclass(frozen=True)
class Program:
    name: str
    command: str
    priority: int
    stopsignal: str = "TERM"
    stopwaitsecs: int = 15
    address: str = ""
    # Natively (supervisord) the command runs behind this prefix; a container runs
    # `command` alone (its processes end with it).
    native_prefix: str = ""

    @property
    def native_command(self) -> str:
        return f"{self.native_prefix} {self.command}".strip()


@dataclass(frozen=True)
class Layout:
    """Where the stack keeps its files under STATE_DIR."""

    state_dir: Path

    @property
    def conf_dir(self) -> Path:
        return self.state_dir / "conf"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def nginx_dir(self) -> Path:
        return self.state_dir / "nginx"

    @property
    def supervisor_conf(self) -> Path:
        return self.conf_dir / "supervisord.conf"

    def make_dirs(self) -> None:
        """STATE_DIR and its directories, mode 0700: made so, or an existing one tightened.

        Nobody but the stack's user may enter: the database, Redis's data, Orthanc's
        storage and the logs (an Explorer `?token=` in nginx's error log) are inside.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for directory in (
            self.state_dir,
            self.conf_dir,
            self.run_dir,
            self.log_dir,
            self.nginx_dir,
            self.state_dir / "redis",
            self.state_dir / "orthanc",
            self.state_dir / "orthanc" / "storage",
            self.state_dir / "orthanc" / "index",
        ):
            directory.mkdir(exist_ok=True, mode=0o700)
            if directory.stat().st_mode & 0o077:
                directory.chmod(0o700)


def gunicorn_workers(workers: int) -> list[str]:
    """gunicorn's options for a service of `workers` workers.

    The app is loaded in the master and the workers forked from it (`--preload`) only
    when there are several: then they share the master's copy of the code. A single
    worker copies the master's pages as it runs (reference counts, objects put in the
    gaps of the master's pools), so both would hold the app, where a master holding
    gunicorn alone costs little (docs/BENCHMARKS.md).
    """
    return ["--workers", str(workers), *(["--preload"] if workers > 1 else [])]


# The policy service answers every request that reaches Orthanc, from memory: an event
# loop per worker (services/policy_service/asgi.py says why). The other two wait on
# bcrypt and Redis, which release the GIL: threads keep a worker busy while one waits.
WORKER_CLASSES = {
    "policy": "services.policy_service.asgi.PolicyWorker",
    "token": "gthread",
    "login": "gthread",
}


def _gunicorn(
    service: str, port: int, workers: int, project_dir: Path, factory: str = "create_app"
) -> str:
    return (
        f"{project_dir / '.venv' / 'bin' / 'gunicorn'} "
        f"-c {project_dir / 'infra' / 'gunicorn.conf.py'} "
        f"--worker-class {WORKER_CLASSES[service]} "
        f"--bind 127.0.0.1:{port} {' '.join(gunicorn_workers(workers))} --name zhiva-{service} "
        f"'services.{service}_service:{factory}()'"
    )


def programs(
    settings: Settings, project_dir: Path = PROJECT_DIR, cores: int | None = None
) -> list[Program]:
    """The stack's processes; supervisord runs them natively, docker-compose one per container."""
    layout = Layout(settings.state_dir)
    cores = cores or os.cpu_count() or 2
    return [
        Program(
            "redis",
            f"redis-server {layout.conf_dir / 'redis.conf'}",
            10,
            address=f"127.0.0.1:{settings.redis_port}",
        ),
        Program(
            "orthanc",
            f"/usr/sbin/Orthanc {layout.conf_dir / 'orthanc.json'}",
            20,
            stopwaitsecs=30,
            address=f"http://127.0.0.1:{settings.orthanc_http_port}, "
            f"DICOM TLS port {settings.dicom_port}",
        ),
        # The policy service answers every Orthanc request: one worker per core.
        Program(
            "policy",
            _gunicorn(
                "policy", settings.policy_service_port, cores, project_dir, "create_asgi_app"
            ),
            30,
            address=f"http://127.0.0.1:{settings.policy_service_port}",
        ),
        Program(
            "token",
            _gunicorn("token", settings.token_service_port, 1, project_dir),
            30,
            address=f"http://127.0.0.1:{settings.token_service_port}",
        ),
        Program(
            "login",
            _gunicorn("login", settings.login_service_port, 1, project_dir),
            30,
            address=f"http://127.0.0.1:{settings.login_service_port}",
        ),
        Program(
            "nginx",
            f"nginx -p {layout.nginx_dir} -c {layout.conf_dir / 'nginx.conf'} "
            f"-e {layout.log_dir / 'nginx-error.log'} -g 'daemon off;'",
            40,
            stopsignal="QUIT",
            address=f"{settings.public_base_url} (listening on {settings.bind_address})",
            # A killed master leaves its workers serving (infra/reap.py).
            native_prefix=f"{project_dir / '.venv' / 'bin' / 'python'} -m infra.reap "
            f"--name nginx {layout.run_dir / 'nginx.pid'}",
        ),
    ]


def passed_knobs() -> dict[str, str]:
    """The knobs `make up` was given in the environment (they reach every program)."""
    return {name: os.environ[name] for name in PASSED_KNOBS if os.environ.get(name)}


def _environment(settings: Settings) -> str:
    values = {"CONFIG_DIR": str(settings.config_dir), "STATE_DIR": str(settings.state_dir)}
    values.update(passed_knobs())
    # supervisord's syntax: KEY="value",KEY2="value2"; `%` must be doubled.
    return ",".join(f'{key}="{value.replace("%", "%%")}"' for key, value in sorted(values.items()))


def _jinja() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - configuration files, not HTML
    )


def viewer_csp(settings: Settings) -> str:
    """The Content-Security-Policy the viewer's pages run under.

    OHIF's decoders need `'unsafe-eval'` and `'wasm-unsafe-eval'`, its index.html inline
    scripts and its workers `blob:` (NOTES: checked with Chromium drawing compressed CTs).
    It talks to its own origin only: DICOMweb and the OpenID Connect provider (the issuer
    is named too, for a page opened under another name than PUBLIC_HOST).
    """
    issuer = urlsplit(settings.oidc_issuer)
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self' 'unsafe-inline' 'unsafe-eval' 'wasm-unsafe-eval'",
            "worker-src 'self' blob:",
            f"connect-src 'self' {issuer.scheme}://{issuer.netloc} blob: data:",
            "img-src 'self' data: blob:",
            "media-src 'self' data: blob:",
            "style-src 'self' 'unsafe-inline'",
            "font-src 'self' data:",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


def render_native(settings: Settings, only: tuple[str, ...] | None = None) -> Layout:
    """Write nginx.conf, orthanc.json, redis.conf and supervisord.conf under STATE_DIR/conf.

    `only` names the files to write (`("orthanc.json",)` when modalities change).
    """
    layout = Layout(settings.state_dir)
    layout.make_dirs()
    running_as_root = os.geteuid() == 0
    context = {
        "settings": settings,
        "state_dir": str(settings.state_dir),
        "run_dir": layout.run_dir,
        "log_dir": layout.log_dir,
        "nginx_dir": layout.nginx_dir,
        "project_dir": PROJECT_DIR,
        "plugin_script": str(PLUGIN_SCRIPT),
        "listen_address": settings.bind_address
        if ":" not in settings.bind_address
        else f"[{settings.bind_address}]",
        "nginx_workers": os.cpu_count() or 2,
        # Natively nginx never starts as root: root's `make up` renders and starts the
        # stack as the service user (infra/stack.py), anyone else as himself, so this is
        # empty. Only the containers render as root; there nginx started as root would hand
        # its workers to `nobody`, who cannot write STATE_DIR's request-body temp files.
        "nginx_user": "root root" if running_as_root else "",
        "origin_regexes": [origin_regex(p) for p in settings.origin_patterns],
        "programs": programs(settings),
        "environment": _environment(settings),
        "stack_id": hashlib.sha256(str(settings.state_dir).encode()).hexdigest()[:8],
        "method_override_query": METHOD_OVERRIDE_QUERY,
        "auth_body_limit": f"{AUTH_MAX_BODY // 1024}k",
        # One grant cache entry for all plain reads of a token (permissions.py says why).
        "pacs_prefix": PACS_PREFIX,
        "shared_read_methods": "|".join(SHARED_READ_METHODS),
        "shared_read_path": SHARED_READ_PATH,
        "shared_read_class": SHARED_READ_CLASS,
        "study_read_path": STUDY_READ_PATH,
        "study_class_prefix": STUDY_CLASS_PREFIX,
        # Who may store and query over DICOM (infra/dicom_ca.py).
        "dicom_ca_certificate": str(ca_certificate_path(settings)),
        "dicom_modalities": orthanc_modalities(settings),
        # The OHIF viewer (infra/viewer.py): its patched build and rendered app-config.js.
        "viewer_path": VIEWER_PATH,
        "viewer_dist": viewer_files(settings.state_dir).dist,
        "viewer_app_config": viewer_files(settings.state_dir).app_config,
        "viewer_csp": viewer_csp(settings),
    }
    environment = _jinja()
    for template, name, secret in (
        ("nginx.conf.j2", "nginx.conf", True),
        ("orthanc.json.j2", "orthanc.json", False),
        ("redis.conf.j2", "redis.conf", True),
        ("supervisord.conf.j2", "supervisord.conf", False),
    ):
        if only is not None and name not in only:
            continue
        text = environment.get_template(template).render(**context)
        target = layout.conf_dir / name
        # Written beside and renamed over: a program (re)starting meanwhile reads the old
        # file or the new one, never half of one (Podman re-runs the containers' set-up
        # whenever it starts a container that depends on it).
        partial = target.with_name(f".{name}.{os.getpid()}")
        partial.unlink(missing_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(partial, target)
    return layout


# Inside the containers: the project at /app, `.env` and keys in /config, state in /state.
CONTAINER_PROJECT_DIR = Path("/app")
CONTAINER_CONFIG_DIR = Path("/config")
CONTAINER_STATE_DIR = Path("/state")


def render_compose() -> str:
    """docker-compose.yml: the native programs, one per container, from the same settings."""
    # Defaults only, so the committed file depends on no local `.env` or environment.
    overrides = {
        **DEFAULTS,
        "CONFIG_DIR": CONTAINER_CONFIG_DIR,
        "STATE_DIR": CONTAINER_STATE_DIR,
        # Inside its container nginx must listen on every interface for the published port.
        "BIND_ADDRESS": "0.0.0.0",  # noqa: S104
    }
    settings = load_settings(overrides, require_secrets=False)
    return (
        _jinja()
        .get_template("docker-compose.yml.j2")
        .render(
            settings=settings,
            # A fixed worker count: the file must not depend on the machine that rendered it.
            programs={p.name: p for p in programs(settings, CONTAINER_PROJECT_DIR, cores=2)},
            # Exec form (no shell in between), so signals reach the program itself.
            commands={
                p.name: json.dumps(shlex.split(p.command))
                for p in programs(settings, CONTAINER_PROJECT_DIR, cores=2)
            },
            config_dir=CONTAINER_CONFIG_DIR,
            state_dir=CONTAINER_STATE_DIR,
        )
    )


COMPOSE_FILE = PROJECT_DIR / "docker-compose.yml"


def main(argv: list[str]) -> int:
    if argv[:1] == ["compose"]:
        COMPOSE_FILE.write_text(render_compose())
        print(f"wrote {COMPOSE_FILE}")
        return 0
    layout = render_native(load_settings())
    print(f"wrote {shlex.quote(str(layout.conf_dir))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
