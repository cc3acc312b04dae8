"""A real Orthanc (Debian's /usr/sbin/Orthanc) with the DICOMweb and Python plugins and our
authorization plugin, plus the policy service under a real gunicorn, for the tests.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import requests

from infra.render import WORKER_CLASSES
from services.settings import PROJECT_DIR

from .processes import free_port, port_open, start_gunicorn, wait_until

ORTHANC = "/usr/sbin/Orthanc"
PLUGINS = "/usr/share/orthanc/plugins"
PLUGIN_SCRIPT = PROJECT_DIR / "infra" / "orthanc" / "plugin.py"
RECORDING_SCRIPT = Path(__file__).resolve().parent / "recording_plugin.py"
DICOMWEB_ROOT = "/pacs/"


class OrthancServer:
    # What Explorer's page answers once Orthanc is up (a plugin that denies all: 403).
    ready_status = 200

    def __init__(self, directory: Path, webhook_url: str, *, timeout: float = 2) -> None:
        self.directory = directory
        self.port = free_port()
        self.webhook_url = webhook_url
        self.timeout = timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def configuration(self) -> dict[str, Any]:
        return {
            "Name": "zhiva-test",
            "StorageDirectory": str(self.directory / "storage"),
            "IndexDirectory": str(self.directory / "index"),
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "ExecuteLuaEnabled": False,
            "HttpThreadsCount": 20,
            "Plugins": [f"{PLUGINS}/libOrthancDicomWeb.so", f"{PLUGINS}/libOrthancPython.so"],
            "PythonScript": str(PLUGIN_SCRIPT),
            "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT},
            "ZhivaAuthorization": {"WebhookUrl": self.webhook_url, "TimeoutSeconds": self.timeout},
        }

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "orthanc.json"
        config.write_text(json.dumps(self.configuration(), indent=2))
        self.log = (self.directory / "orthanc.log").open("ab")
        self.process = subprocess.Popen(
            [ORTHANC, "--verbose", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        # Static Explorer files answer without a token: the readiness probe.
        wait_until(
            lambda: (
                requests.get(f"{self.url}/app/explorer.html", timeout=1).status_code
                == self.ready_status
            ),
            30,
            "Orthanc",
        )

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
        if getattr(self, "log", None):
            self.log.close()

    def log_text(self) -> str:
        return (self.directory / "orthanc.log").read_text(errors="replace")


class PolicyServer:
    """`gunicorn 'services.policy_service:create_asgi_app()'` configured through the environment."""

    def __init__(self, directory: Path, environment: dict[str, str], port: int | None = None):
        self.directory = directory
        self.environment = environment
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log = (self.directory / "policy.log").open("ab")
        # The stack's own settings (the asgi worker), as `make up` runs them.
        self.process = start_gunicorn(
            "services.policy_service:create_asgi_app()",
            env={**os.environ, **self.environment},
            log=self.log,
            options=(
                *("--worker-class", WORKER_CLASSES["policy"]),
                *("--bind", f"127.0.0.1:{self.port}", "--workers", "2"),
            ),
        )
        wait_until(lambda: requests.get(f"{self.url}/healthz", timeout=1).ok, 30, "policy service")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
        self.log.close()
        wait_until(lambda: not port_open(self.port), 10, "policy service shutdown")


class RecordingOrthanc(OrthancServer):
    """Orthanc 1.10.1 whose request filter writes down how Orthanc read each request and runs
    none of them (tests/support/recording_plugin.py): what a spelling means to Orthanc."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, webhook_url="")
        self.record_file = directory / "requests.jsonl"

    def configuration(self) -> dict[str, Any]:
        config = super().configuration()
        del config["ZhivaAuthorization"]
        config["PythonScript"] = str(RECORDING_SCRIPT)
        config["Recorder"] = {"File": str(self.record_file)}
        config["WebDavEnabled"] = False  # as the stack's (infra/templates/orthanc.json.j2)
        return config

    def record_of(self, probe: str) -> dict[str, Any] | None:
        """How Orthanc read the request sent with header `X-Probe: probe`, or None."""
        if not self.record_file.exists():
            return None
        for line in self.record_file.read_text().splitlines():
            record = json.loads(line)
            if record["headers"].get("x-probe") == probe:
                return record
        return None
