"""The audit trail: one JSON line per access decision, never the token itself.

Lines go to `STATE_DIR/logs/audit.log` (appended by every gunicorn worker;
each line is written with one `write` on a file opened for appending, so lines
do not interleave). Denies also go to the `zhiva.audit` logger, which gunicorn
sends to the service's log (`make logs`); grants only to the file: a second
copy of every grant would cost a large share of the policy service's CPU per
decision (docs/BENCHMARKS.md), and a grant is not what a person tails logs for.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

from services.access.paths import PathRefused, orthanc_path

from .decision import AccessRequest, Decision

log = logging.getLogger("zhiva.audit")


class _Stderr(logging.StreamHandler):
    """Whatever sys.stderr is at the time of writing (test runners swap it)."""

    @property
    def stream(self):  # type: ignore[no-untyped-def]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # type: ignore[no-untyped-def]
        pass


def log_to_stderr() -> None:
    """Send audit lines to stderr as they are (gunicorn's stderr is the service's log).

    Nothing else configures logging in the services, and an unconfigured
    logger drops INFO lines; done once per process.
    """
    if not any(getattr(h, "zhiva_audit", False) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("audit %(message)s"))
        handler.zhiva_audit = True  # type: ignore[attr-defined]
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._lock = threading.Lock()

    @staticmethod
    def entry(request: AccessRequest, decision: Decision) -> dict[str, object]:
        # The path Orthanc runs: nginx asks about the client's spelling, which is kept beside
        # it when it differs; the webhook's `uri` is already Orthanc's own reading.
        path, spelled = request.path, None
        if request.via == "nginx" and path:
            try:
                path = orthanc_path(request.path)
            except PathRefused:
                pass
            if path != request.path:
                spelled = request.path
        entry: dict[str, object] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "via": request.via,
            "user": decision.user,
            "jti": decision.jti,
            "client": request.client,
            "origin": request.origin,
            "method": request.method,
            "path": path,
            "level": request.level,
            "resource": request.resource,
            "decision": "grant" if decision.granted else "deny",
            "reason": decision.reason,
        }
        if spelled is not None:
            entry["spelled"] = spelled
        return entry

    def record(self, request: AccessRequest, decision: Decision) -> None:
        try:
            line = json.dumps(self.entry(request, decision), separators=(",", ":"))
            with self._lock:
                os.write(self._fd, (line + "\n").encode())
            if not decision.granted:
                log.info("%s", line)
        except Exception:  # noqa: BLE001 - a failed audit line must not turn into a grant or a 500
            log.exception("could not write the audit line")

    def close(self) -> None:
        os.close(self._fd)
