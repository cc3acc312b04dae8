"""What the bench runs against: the whole stack, a bare Orthanc and a second nginx.

- the stack: `make up` in a temporary STATE_DIR/CONFIG_DIR on free ports
  (tests/support/stack.py's Stack, which does exactly that);
- a bare Orthanc: the stack's own orthanc.json without the Python plugin, its
  own storage and port, nothing else changed (baseline "Orthanc directly");
- a second nginx made from the stack's rendered nginx.conf with two servers:
  `check` (the same /zhiva/ location, auth_request and its cache included, but
  an empty static file instead of Orthanc: "the nginx check alone") and
  `noauth` (the same TLS path without auth_request, proxied to the bare
  Orthanc: baseline "same nginx/TLS path without any authorization");
  bench/check_cost.py asks for two more, to the stack's own Orthanc: the
  stack's server block as it is (`as_stack`), and without auth_request
  (`no_check`).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import requests

from tests.support.nginx import NginxCopy, listen_on
from tests.support.processes import free_port, wait_until
from tests.support.stack import Stack

ORTHANC = "/usr/sbin/Orthanc"


def orthanc_config_without_plugin(rendered: str, directory: Path, port: int) -> dict:
    """The stack's orthanc.json (comments are whole lines) minus the Python plugin."""
    text = "\n".join(line for line in rendered.splitlines() if not line.strip().startswith("//"))
    config = json.loads(text)
    config["Plugins"] = [p for p in config["Plugins"] if "Python" not in p]
    for key in ("PythonScript", "PythonVerbose", "ZhivaAuthorization"):
        config.pop(key, None)
    config.update(
        Name="zhiva-bench-bare",
        StorageDirectory=str(directory / "storage"),
        IndexDirectory=str(directory / "index"),
        HttpPort=port,
        DicomServerEnabled=False,
        DicomTlsEnabled=False,
    )
    return config


class BareOrthanc:
    def __init__(self, stack: Stack, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        rendered = (stack.layout.conf_dir / "orthanc.json").read_text()
        self.config = orthanc_config_without_plugin(rendered, directory, self.port)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "orthanc.json"
        path.write_text(json.dumps(self.config, indent=1))
        self.log = (self.directory / "orthanc.log").open("ab")
        self.process = subprocess.Popen(
            [ORTHANC, str(path)], stdout=self.log, stderr=subprocess.STDOUT, cwd=self.directory
        )
        wait_until(lambda: requests.get(f"{self.url}/system", timeout=1).ok, 60, "bare Orthanc")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        if getattr(self, "log", None):
            self.log.close()


def _server_block(conf: str) -> tuple[str, str, str]:
    """(before the server block, the block, after it) of the rendered nginx.conf."""
    start = conf.index("\n    server {\n") + 1
    end = conf.index("\n    }\n", start) + len("\n    }\n")
    return conf[:start], conf[start:end], conf[end:]


class BenchNginx:
    """Extra servers (`check`, `noauth`; `as_stack`, `no_check` when asked for) made from
    the stack's own rendered nginx.conf."""

    def __init__(
        self, stack: Stack, directory: Path, bare: BareOrthanc, *, to_stack_orthanc: bool = False
    ) -> None:
        self.directory = directory
        self.check_port = free_port()
        self.noauth_port = free_port()
        # The stack's server block in this nginx, with and without its check: the stack's
        # path and the check's share of it, measured in one nginx process.
        self.as_stack_port = free_port() if to_stack_orthanc else None
        self.no_check_port = free_port() if to_stack_orthanc else None
        self.bare = bare
        self.nginx = NginxCopy(stack, directory, self._servers)

    def _servers(self, conf: str) -> str:
        head, block, tail = _server_block(conf)
        zhiva_proxy = "            proxy_pass http://orthanc/;\n"
        check_line = "            auth_request /_authorize;\n"
        if block.count(zhiva_proxy) != 1 or block.count(check_line) != 1:
            raise RuntimeError("nginx.conf changed shape: update bench/environment.py")
        static = self.directory / "static"
        static.mkdir(parents=True, exist_ok=True)
        (static / "ok").write_text("")
        check = listen_on(block, self.check_port).replace(
            zhiva_proxy, f"            root {static};\n            try_files /ok =404;\n"
        )
        noauth = (
            listen_on(block, self.noauth_port)
            .replace(check_line, "")
            .replace("proxy_pass http://orthanc/", "proxy_pass http://orthanc_bare/")
        )
        to_stack = ""
        if self.as_stack_port is not None and self.no_check_port is not None:
            to_stack = listen_on(block, self.as_stack_port) + listen_on(
                block, self.no_check_port
            ).replace(check_line, "")
        port = self.bare.port
        upstream = f"    upstream orthanc_bare {{ server 127.0.0.1:{port}; keepalive 32; }}\n"
        return head + upstream + check + noauth + to_stack + tail

    def start(self) -> None:
        self.nginx.start(f"https://localhost:{self.noauth_port}/zhiva/app/explorer.html")

    def stop(self) -> None:
        self.nginx.stop()
