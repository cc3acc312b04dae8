"""Mixed client traffic through a stack's nginx: QIDO, WADO, STOW, refresh and redeem.

The load test (tests/test_load.py) runs it on a stack of its own; the fault tests
(tests/test_faults_stack.py) run it while they break the stack.
"""

from __future__ import annotations

import io
import random
import secrets
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pydicom
import requests
from pydicom.uid import generate_uid

from services.domain.auth_tokens import issue_auth_token
from services.domain.tokens import TokenCodec, TokenKind
from services.stores.accounts import identity
from tests.support.dicom import sample_file
from tests.support.stack import Stack

CLIENTS = 50
USER_PASSWORD = "Load-Passw0rd!"
# Each client's share of the operations (weights).
MIX = {"qido": 30, "wado": 30, "stow": 15, "refresh": 15, "redeem": 10}


def new_instance() -> tuple[bytes, tuple[str, str, str]]:
    """CT_small with fresh study/series/instance UIDs, as bytes, and those UIDs."""
    dataset = pydicom.dcmread(sample_file())
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), (
        dataset.StudyInstanceUID,
        dataset.SeriesInstanceUID,
        dataset.SOPInstanceUID,
    )


def stow_body(data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


@dataclass
class Outcome:
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    acknowledged: list[tuple[str, str, str]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, op: str, ok: bool, detail: str, seconds: float) -> None:
        with self.lock:
            self.counts[op] += 1
            self.latencies.append(seconds)
            if not ok:
                self.errors.append(f"{op}: {detail}")


class Traffic:
    """Mixed client traffic through nginx; `run()` for a while, or `start()`/`stop()`."""

    def __init__(self, stack: Stack, clients: int = CLIENTS, tolerate: bool = False) -> None:
        self.stack = stack
        self.clients = clients
        # During a fault, refusals are expected; they are counted, never a grant to a bad token.
        self.tolerate = tolerate
        self.codec = TokenCodec.from_settings(stack.settings, can_sign=True)
        suffix = secrets.token_hex(3)
        editor = stack.create_user(f"load-editor-{suffix}", USER_PASSWORD, can_edit=True)
        self.editor = identity(editor)
        self.access = self.codec.issue(TokenKind.ACCESS, self.editor)[0]
        self.refresh = self.codec.issue(TokenKind.REFRESH, self.editor)[0]
        self.outcome = Outcome()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.template, _ = new_instance()

    # ------------------------------------------------------------------ operations

    def _session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False
        session.verify = self.stack.ca_file
        return session

    def _instance(self) -> tuple[bytes, tuple[str, str, str]]:
        dataset = pydicom.dcmread(io.BytesIO(self.template))
        uids = (generate_uid(), generate_uid(), generate_uid())
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID = uids
        dataset.file_meta.MediaStorageSOPInstanceUID = uids[2]
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue(), uids

    def one(self, http: requests.Session, op: str) -> tuple[bool, str]:
        base = self.stack.base_url
        auth = {"Authorization": f"Bearer {self.access}"}
        if op == "qido":
            r = http.get(f"{base}/zhiva/pacs/studies?limit=20", headers=auth, timeout=60)
            return r.status_code == 200, str(r.status_code)
        if op == "wado":
            with self.outcome.lock:
                known = list(self.outcome.acknowledged[-200:])
            if not known:
                return self.one(http, "qido")
            study, series, sop = random.choice(known)
            url = f"{base}/zhiva/pacs/studies/{study}/series/{series}/instances/{sop}/metadata"
            r = http.get(url, headers=auth, timeout=60)
            return r.status_code == 200, str(r.status_code)
        if op == "stow":
            data, uids = self._instance()
            body, content_type = stow_body(data)
            r = http.post(
                f"{base}/zhiva/pacs/studies",
                data=body,
                headers={**auth, "Content-Type": content_type, "Accept": "application/dicom+json"},
                timeout=60,
            )
            if r.status_code == 200:
                with self.outcome.lock:
                    self.outcome.acknowledged.append(uids)
            return r.status_code == 200, str(r.status_code)
        if op == "refresh":
            r = http.post(
                f"{base}/auth/refresh-token",
                headers={"Authorization": f"Bearer {self.refresh}"},
                timeout=60,
            )
            ok = r.status_code == 200 and r.headers.get("Authorization", "").startswith("Bearer ")
            return ok, str(r.status_code)
        if op == "redeem":
            token, _ = issue_auth_token(self.codec, self.stack.settings, self.editor)
            r = http.post(
                f"{base}/auth/generate-access-token",
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )
            return r.status_code == 200 and bool(r.text), str(r.status_code)
        raise ValueError(op)

    def _client(self, seed: int) -> None:
        rng = random.Random(seed)
        ops, weights = list(MIX), list(MIX.values())
        with self._session() as http:
            while not self._stop.is_set():
                op = rng.choices(ops, weights)[0]
                start = time.monotonic()
                try:
                    ok, detail = self.one(http, op)
                except requests.RequestException as error:
                    ok, detail = False, type(error).__name__
                self.outcome.record(op, ok, detail, time.monotonic() - start)
                if not ok and self.tolerate:
                    time.sleep(0.05)

    def start(self) -> None:
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._client, args=(seed,), daemon=True)
            for seed in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def run(self, seconds: float) -> Outcome:
        self.start()
        try:
            time.sleep(seconds)
        finally:
            self.stop()
        return self.outcome

    def missing(self, uids: list[tuple[str, str, str]]) -> list[str]:
        """Acknowledged instances that cannot be read back (through nginx, admin token)."""
        admin = self.stack.create_user(
            f"load-admin-{secrets.token_hex(3)}", USER_PASSWORD, is_admin=True
        )
        token = self.codec.issue(TokenKind.ACCESS, identity(admin))[0]
        lost = []
        with self._session() as http:
            for study, series, sop in uids:
                url = (
                    f"{self.stack.base_url}/zhiva/pacs/studies/{study}/series/{series}"
                    f"/instances/{sop}/metadata"
                )
                if http.get(url, headers={"token": token}, timeout=60).status_code != 200:
                    lost.append(sop)
        return lost
