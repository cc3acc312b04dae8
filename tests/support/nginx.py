"""A second nginx made from a running stack's own rendered nginx.conf, edited (tests, bench).

The copy keeps the stack's certificate and upstreams (the policy service answers its
`auth_request`s) and gets its own directory for pid, logs, caches and temp files.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import requests

from tests.support.processes import wait_until
from tests.support.stack import Stack


def listen_on(server_block: str, port: int) -> str:
    """The server block with its TLS listen address moved to 127.0.0.1:port."""
    return re.sub(r"listen [^;]*?:\d+ ssl", f"listen 127.0.0.1:{port} ssl", server_block, count=1)


def upstream_to(conf: str, name: str, port: int) -> str:
    """The conf with upstream `name`'s server moved to 127.0.0.1:port."""
    edited, count = re.subn(
        rf"(upstream {name}\s*\{{ server 127\.0\.0\.1:)\d+;", rf"\g<1>{port};", conf
    )
    if count != 1:
        raise RuntimeError(f"nginx.conf has no upstream {name} of one server: update {__file__}")
    return edited


class NginxCopy:
    def __init__(self, stack: Stack, directory: Path, edit: Callable[[str], str]) -> None:
        """`edit` takes the stack's nginx.conf, its paths already moved to `directory`."""
        self.directory = directory
        self.ca_file = stack.ca_file
        layout = stack.layout
        conf = (layout.conf_dir / "nginx.conf").read_text()
        for path in (layout.nginx_dir, layout.log_dir, layout.run_dir):
            conf = conf.replace(str(path), str(directory))
        self.conf = edit(conf)
        if os.geteuid() == 0:
            # The stack's nginx runs as its service user and names none; this copy starts
            # as root in a directory only root may enter, so its workers stay root.
            self.conf = "user root root;\n" + self.conf
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_url: str) -> None:
        """Start it and wait until `ready_url` answers anything below 500."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "nginx.conf"
        path.write_text(self.conf)
        path.chmod(0o600)  # it holds the decided header's value, as the stack's does
        self.process = subprocess.Popen(
            ["nginx", "-p", str(self.directory), "-c", str(path)]
            + ["-e", str(self.directory / "nginx-error.log"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with requests.Session() as session:
            session.trust_env = False
            wait_until(
                lambda: session.get(ready_url, verify=self.ca_file, timeout=1).status_code < 500,
                30,
                f"nginx in {self.directory}",
            )

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
