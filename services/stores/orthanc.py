"""Questions the services ask Orthanc itself: which study a resource belongs to.

Orthanc's HTTP port (loopback only) lets a request through on nginx's word
(services/access/handoff.py), so this client sends the value nginx would send
for exactly its own request, bound to no token. Standard library only: the
policy service asks through it too.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
from typing import Any
from urllib.parse import quote

from services.access.handoff import HEADER, bound_value, handoff_key
from services.access.paths import orthanc_path
from services.access.permissions import handoff_scope

log = logging.getLogger("zhiva")

TIMEOUT_SECONDS = 3.0
LEVELS = ("studies", "series", "instances")


class OrthancUnavailable(RuntimeError):
    """Orthanc did not answer: callers refuse what depended on the answer."""

    def __init__(self) -> None:
        super().__init__("The PACS does not answer; try again in a moment")


class OrthancResources:
    """Finds studies and resources' studies in the stack's Orthanc (one connection a thread)."""

    def __init__(self, port: int, secret_key: str, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.key = handoff_key(secret_key)
        self._local = threading.local()

    def _request(self, method: str, path: str, body: bytes | None = None) -> Any:
        """The JSON of a 200 answer, None for a 404; OrthancUnavailable otherwise."""
        scope = handoff_scope(method, orthanc_path(path))
        headers = {HEADER: bound_value(self.key, method, scope, None)}
        if body is not None:
            headers["Content-Type"] = "text/plain"
        for attempt in (1, 2):  # a kept-alive connection Orthanc closed is opened again once
            connection = getattr(self._local, "connection", None)
            if connection is None:
                connection = http.client.HTTPConnection(
                    self.host, self.port, timeout=TIMEOUT_SECONDS
                )
                self._local.connection = connection
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException):
                connection.close()
                self._local.connection = None
                if attempt == 2:
                    log.error("Orthanc unreachable on %s %s", method, path)
                    raise OrthancUnavailable() from None
                continue
            if response.status == 404:
                return None
            if response.status != 200:
                log.error("Orthanc answered %s to %s %s", response.status, method, path)
                raise OrthancUnavailable()
            return json.loads(payload)
        raise OrthancUnavailable()  # not reached: the loop returns or raises

    def close(self) -> None:
        """Close the calling thread's connection (the next request opens a new one)."""
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            connection.close()

    def study_of(self, level: str, orthanc_id: str) -> str | None:
        """The Orthanc ID of the study of a series or an instance; None when there is none."""
        if level not in LEVELS:
            raise ValueError(f"no such level {level!r}")
        resource = f"/{level}/{quote(orthanc_id, safe='')}"
        answer = self._request("GET", resource if level == "studies" else resource + "/study")
        study = answer.get("ID") if isinstance(answer, dict) else None
        return study if isinstance(study, str) else None

    def find_study(self, study_uid: str) -> str | None:
        """The Orthanc ID of the study with this StudyInstanceUID, None when it is not stored."""
        answer = self._request("POST", "/tools/lookup", study_uid.encode("ascii"))
        for item in answer if isinstance(answer, list) else []:
            if isinstance(item, dict) and item.get("Type") == "Study":
                found = item.get("ID")
                return found if isinstance(found, str) else None
        return None
