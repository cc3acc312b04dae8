"""Straight against a real Orthanc with our plugin and the real policy service under gunicorn.

A grant must mean Orthanc did it; a deny must mean Orthanc's data is
unchanged (checked with an admin token after every refused write).
"""

from __future__ import annotations

import http.client
import http.server
import json
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file

from services.domain.tokens import TokenCodec, TokenKind
from services.settings import load_settings
from services.stores.accounts import identity, save_user
from services.stores.revocation import RevocationStore, redis_client
from services.stores.schema import upgrade
from tests.browser.chromium import chromium_browser
from tests.support.explorer import ExplorerPage, unique_dicom
from tests.support.orthanc import OrthancServer, PolicyServer
from tests.support.revocation import revoke_and_wait, system_webhook_body
from tests.support.spelled import send_spelled

PASSWORD = "Str0ng-Passw0rd!"
CT = Path(get_testdata_file("CT_small.dcm"))
MR = Path(get_testdata_file("MR_small.dcm"))


class Pacs:
    def __init__(self, config: dict[str, Any], policy: PolicyServer, orthanc: OrthancServer):
        self.config = config
        self.policy = policy
        self.orthanc = orthanc
        settings = load_settings(config)
        self.codec = TokenCodec.from_settings(settings, can_sign=True)
        self.revocations = RevocationStore(
            redis_client(settings.redis_url), config["REDIS_KEY_PREFIX"]
        )
        self.users: dict[str, Any] = {}
        self.http = requests.Session()
        self.admin_token = ""

    def token(self, role: str, kind: TokenKind = TokenKind.ACCESS, **kw: Any) -> str:
        return self.codec.issue(kind, self.users[role], **kw)[0]

    def call(
        self, method: str, path: str, token: str | None = None, *, how: str = "header", **kw: Any
    ) -> requests.Response:
        return send_spelled(
            self.http, method, self.orthanc.url, path, token, how=how, timeout=10, **kw
        )

    def admin(self, method: str, path: str, **kw: Any) -> Any:
        response = self.call(method, path, self.admin_token, **kw)
        assert response.ok, (method, path, response.status_code, response.text[:200])
        return response.json() if response.content else None

    def snapshot(self) -> dict[str, Any]:
        """What a refused write could have changed."""
        return {
            "studies": sorted(self.admin("GET", "/studies")),
            "instances": sorted(self.admin("GET", "/instances")),
            "modalities": self.admin("GET", "/modalities"),
            "tags": {
                s: self.admin("GET", f"/studies/{s}")["MainDicomTags"]
                for s in self.admin("GET", "/studies")
            },
        }


@pytest.fixture(scope="module")
def pacs(config_dir: Path, redis_server: Any, tmp_path_factory: pytest.TempPathFactory):
    state_dir = tmp_path_factory.mktemp("pacs-state")
    database_url = f"sqlite:///{state_dir / 'zhiva.db'}"
    upgrade(database_url)
    config = {
        "CONFIG_DIR": str(config_dir),
        "STATE_DIR": str(state_dir),
        "DATABASE_URL": database_url,
        "REDIS_PORT": str(redis_server.port),
        "REDIS_PASSWORD": redis_server.password,
        "REDIS_KEY_PREFIX": f"test-{uuid.uuid4().hex}:",
    }
    policy = PolicyServer(state_dir / "policy", config)
    orthanc = OrthancServer(state_dir / "orthanc", f"{policy.url}/webhook")
    pacs = Pacs(config, policy, orthanc)
    from services.stores.db import Database

    db = Database(database_url)
    with db.session() as session:
        for role in ("viewer", "editor", "admin", "victim"):
            pacs.users[role] = identity(
                save_user(
                    session,
                    name=role.title(),
                    username=role,
                    password=PASSWORD,
                    can_edit=role in ("editor", "admin", "victim"),
                    is_admin=role == "admin",
                )
            )
    db.engine.dispose()
    pacs.admin_token = pacs.token("admin")
    policy.start()
    orthanc.start()
    try:
        pacs.admin("POST", "/instances", data=CT.read_bytes())
        yield pacs
    finally:
        orthanc.stop()
        policy.stop()
        pacs.revocations.client.close()
        pacs.http.close()


def stow_body(path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def ct_ids(pacs: Pacs) -> tuple[str, str, str]:
    dataset = pydicom.dcmread(CT)
    study = pacs.admin("POST", "/tools/lookup", data=dataset.StudyInstanceUID)[0]["ID"]
    return study, dataset.StudyInstanceUID, dataset.SeriesInstanceUID


# --- reads --------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["viewer", "editor", "admin"])
@pytest.mark.parametrize("how", ["header", "bearer", "query"])
def test_reads_granted_to_every_role(pacs, role, how):
    token = pacs.token(role)
    study, study_uid, series_uid = ct_ids(pacs)
    instance = pacs.admin("GET", f"/studies/{study}/instances")[0]["ID"]
    for path in (
        "/studies",
        f"/studies/{study}",
        f"/instances/{instance}/file",
        "/pacs/studies",
        f"/pacs/studies?StudyInstanceUID={study_uid}",
        f"/pacs/studies/{study_uid}/series/{series_uid}/metadata",
    ):
        response = pacs.call("GET", path, token, how=how)
        assert response.status_code == 200, (path, response.status_code)
    if how != "query":  # the GET argument is for GET requests only
        found = pacs.call(
            "POST", "/tools/find", token, how=how, json={"Level": "Study", "Query": {}}
        )
        assert found.status_code == 200 and study in found.json()


def test_static_explorer_without_token_and_extension_installed(pacs):
    assert pacs.call("GET", "/app/explorer.html").status_code == 200
    script = pacs.call("GET", "/plugins/explorer.js")
    assert script.status_code == 200 and "zhivaToken" in script.text
    assert pacs.call("GET", "/app/../studies").status_code == 403
    assert pacs.call("GET", "/app/%2e%2e/studies").status_code == 403


@pytest.mark.parametrize(
    "state", ["none", "expired", "forged", "revoked", "used auth", "refresh", "wrong origin"]
)
def test_bad_tokens_open_nothing(pacs, state):
    before = pacs.snapshot()
    token: str | None = None
    headers = {}
    if state == "expired":
        token = pacs.token("admin", now=int(time.time()) - 48 * 3600)
    elif state == "forged":
        token = pacs.admin_token[:-6] + (
            "AAAAAA" if not pacs.admin_token.endswith("AAAAAA") else "BBBBBB"
        )
    elif state in ("revoked", "used auth"):
        kind = TokenKind.ACCESS if state == "revoked" else TokenKind.AUTH
        token, claims = pacs.codec.issue(kind, pacs.users["admin"])
        revoke_and_wait(
            pacs.revocations, pacs.policy.url, token, claims, once=kind is TokenKind.AUTH
        )
    elif state == "refresh":
        token = pacs.token("admin", TokenKind.REFRESH)
    elif state == "wrong origin":
        token = pacs.token("admin", audience="https://app.zhiva.ai")
        headers = {"Origin": "https://evil.zhiva.ai"}
    for method, path, kw in [
        ("GET", "/studies", {}),
        ("GET", "/pacs/studies", {}),
        ("POST", "/tools/find", {"json": {"Level": "Study", "Query": {}}}),
        ("POST", "/instances", {"data": MR.read_bytes()}),
        ("DELETE", f"/studies/{ct_ids(pacs)[0]}", {}),
    ]:
        response = pacs.call(method, path, token, headers=headers, **kw)
        assert response.status_code == 403, (state, method, path)
    assert pacs.snapshot() == before


# --- writes -------------------------------------------------------------------------------------


def test_viewer_writes_refused_and_nothing_changes(pacs):
    token = pacs.token("viewer")
    study, study_uid, _ = ct_ids(pacs)
    before = pacs.snapshot()
    body, content_type = stow_body(MR)
    attempts = [
        ("POST", "/instances", {"data": MR.read_bytes()}),
        ("POST", "/pacs/studies", {"data": body, "headers": {"Content-Type": content_type}}),
        (
            "POST",
            f"/studies/{study}/modify",
            {"json": {"Replace": {"StudyDescription": "x"}, "Force": True}},
        ),
        ("POST", f"/studies/{study}/anonymize", {"json": {}}),
        ("DELETE", f"/studies/{study}", {}),
        ("POST", "/tools/execute-script", {"data": "print(1)"}),
        ("PUT", "/modalities/evil", {"json": {"AET": "EVIL", "Host": "127.0.0.1", "Port": 104}}),
        ("POST", "/tools/reset", {}),
    ]
    for method, path, kw in attempts:
        assert pacs.call(method, path, token, **kw).status_code == 403, path
    assert pacs.snapshot() == before


SPELLINGS = [
    ("POST", "//instances"),
    ("POST", "/instances/"),
    ("POST", "/INSTANCES"),
    ("POST", "/%69nstances"),
    ("POST", "/./instances"),
    ("POST", "/tools/find/../../instances"),
    ("POST", "/tools/find/%2e%2e/%2E%2E/instances"),
    ("POST", "/tools/find/..%2F..%2Finstances"),
    ("POST", "/instances%2F..%2Ftools%2Ffind"),
    ("POST", "/instances/../tools/find"),
    ("POST", "/instances?/tools/find"),
    ("POST", "/instances?x=/../tools/find"),
    ("POST", "/pacs//studies"),
    ("POST", "/pacs/studies/"),
    ("POST", "/PACS/studies"),
    ("POST", "/tools/find/../../pacs/studies"),
]


@pytest.mark.parametrize(("method", "path"), SPELLINGS)
def test_write_spellings_refused_for_viewer(pacs, method, path):
    token = pacs.token("viewer")
    before = pacs.snapshot()
    body, content_type = stow_body(MR)
    response = pacs.call(method, path, token, data=body, headers={"Content-Type": content_type})
    # 403 from the plugin, 404 for a path Orthanc has no route for, or 400 where Orthanc
    # itself resolved the spelling to the read `/tools/find` (and refused the DICOM body).
    assert response.status_code in (400, 403, 404), response.status_code
    assert pacs.snapshot() == before


@pytest.mark.parametrize(
    "path", ["/tools/find/../../studies/{study}", "//studies/{study}/", "/STUDIES/{study}"]
)
def test_delete_spellings_refused_for_viewer(pacs, path):
    token = pacs.token("viewer")
    before = pacs.snapshot()
    response = pacs.call("DELETE", path.format(study=ct_ids(pacs)[0]), token)
    assert response.status_code in (403, 404)
    assert pacs.snapshot() == before


@pytest.mark.parametrize("kind", [TokenKind.ACCESS, TokenKind.AUTH])
def test_editor_writes_happen(pacs, kind):
    token = pacs.token("editor", kind)
    mr_uid = pydicom.dcmread(MR).StudyInstanceUID
    uploaded = pacs.call("POST", "/instances", token, data=MR.read_bytes())
    assert uploaded.status_code == 200, uploaded.text
    assert pacs.admin("POST", "/tools/lookup", data=mr_uid)
    study = pacs.admin("POST", "/tools/lookup", data=mr_uid)[0]["ID"]
    anonymized = pacs.call("POST", f"/studies/{study}/anonymize", token, json={})
    assert anonymized.status_code == 200
    new_study = anonymized.json()["ID"]
    assert new_study in pacs.admin("GET", "/studies")
    for target in (new_study, study):
        assert pacs.call("DELETE", f"/studies/{target}", token).status_code == 200
        assert target not in pacs.admin("GET", "/studies")
    # STOW-RS too.
    body, content_type = stow_body(MR)
    stored = pacs.call(
        "POST",
        "/pacs/studies",
        token,
        data=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
    )
    assert stored.status_code == 200, stored.text
    study = pacs.admin("POST", "/tools/lookup", data=mr_uid)[0]["ID"]
    assert pacs.call("DELETE", f"/studies/{study}", token).status_code == 200
    # ... but no system route.
    before = pacs.snapshot()
    for method, path in (
        ("PUT", "/modalities/evil"),
        ("POST", "/tools/reset"),
        ("POST", "/tools/execute-script"),
    ):
        assert (
            pacs.call(method, path, token, json={"AET": "E", "Host": "h", "Port": 1}).status_code
            == 403
        )
    assert pacs.snapshot() == before


def test_admin_system_routes_but_never_execute_script(pacs):
    token = pacs.admin_token
    modality = {"AET": "OTHER", "Host": "127.0.0.1", "Port": 1104}
    assert pacs.call("PUT", "/modalities/other", token, json=modality).status_code == 200
    assert "other" in pacs.admin("GET", "/modalities")
    assert pacs.call("DELETE", "/modalities/other", token).status_code == 200
    assert "other" not in pacs.admin("GET", "/modalities")
    assert pacs.call("PUT", "/tools/log-level", token, data="default").status_code == 200
    for path in ("/tools/execute-script", "/TOOLS/EXECUTE-SCRIPT", "/tools/%65xecute-script"):
        assert pacs.call("POST", path, token, data="print(1)").status_code == 403


def test_used_auth_token_closes_the_pacs(pacs):
    token, claims = pacs.codec.issue(TokenKind.AUTH, pacs.users["viewer"])
    assert pacs.call("GET", "/studies", token).status_code == 200
    assert pacs.revocations.redeem_once(claims["jti"], claims["exp"])
    start = time.monotonic()
    while pacs.call("GET", "/studies", token).status_code == 200:
        assert time.monotonic() - start < 5, "a redeemed auth token still opens Orthanc"
        time.sleep(0.1)


def test_revocation_bites_within_5_seconds_through_the_plugin_cache(pacs):
    token, claims = pacs.codec.issue(TokenKind.ACCESS, pacs.users["victim"])
    assert pacs.call("GET", "/studies", token).status_code == 200  # now cached in the plugin
    pacs.revocations.revoke(claims["jti"], claims["exp"])
    start = time.monotonic()
    while pacs.call("GET", "/studies", token).status_code == 200:
        assert time.monotonic() - start < 5
        time.sleep(0.1)


def test_plugin_judges_a_known_token_itself_with_the_same_table(pacs):
    """After one webhook call the plugin knows the token's role: new URIs cost no call,
    and what the role may not do still goes to the webhook (and is refused there)."""
    token, claims = pacs.codec.issue(TokenKind.ACCESS, pacs.users["viewer"])
    log = Path(pacs.config["STATE_DIR"]) / "logs" / "audit.log"

    def calls() -> list[dict[str, Any]]:
        return [
            entry
            for entry in map(json.loads, log.read_text().splitlines())
            if entry["jti"] == claims["jti"]
        ]

    assert pacs.call("GET", "/studies", token).status_code == 200
    study = pacs.admin("GET", "/studies")[0]
    paths = [
        "/patients",
        "/series",
        "/instances",
        f"/studies/{study}",
        f"/studies/{study}/series",
        "/pacs/studies",
        "/statistics",
    ]
    for path in paths:
        assert pacs.call("GET", path, token).status_code == 200
    assert len(calls()) <= 2  # one call, or two if the validity ran out meanwhile
    assert pacs.call("DELETE", f"/studies/{study}", token).status_code == 403
    assert calls()[-1]["decision"] == "deny" and calls()[-1]["method"] == "DELETE"
    assert study in pacs.admin("GET", "/studies")


# --- the webhook down, slow or talking nonsense --------------------------------------------------


class _Nonsense(http.server.BaseHTTPRequestHandler):
    answer: bytes = b""
    delay = 0.0

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(self.delay)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, *args: Any) -> None:
        pass


def test_policy_down_or_nonsense_denies_everything_and_recovers(pacs):
    token = pacs.token("admin")
    probe = ["/studies", "/system", "/pacs/studies", "/patients"]
    assert all(pacs.call("GET", p, token).status_code == 200 for p in probe)
    pacs.policy.stop()
    try:
        time.sleep(2.1)  # cached grants run out (MaxValidity)
        assert all(pacs.call("GET", p, token).status_code == 403 for p in probe)
        assert pacs.call("GET", "/statistics", token).status_code == 403
        for answer, delay in (
            (b'{"granted": "yes", "validity": 5}', 0.0),
            (b'{"granted": true}', 0.0),
            (b"granted", 0.0),
            (b"[true]", 0.0),
            (b'{"granted": true, "validity": 60}', 3.0),
        ):
            handler = type("Handler", (_Nonsense,), {"answer": answer, "delay": delay})
            server = http.server.ThreadingHTTPServer(("127.0.0.1", pacs.policy.port), handler)
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            try:
                started = time.monotonic()
                assert pacs.call("GET", "/statistics", token).status_code == 403, answer
                assert time.monotonic() - started < 5
            finally:
                server.shutdown()
                server.server_close()
                thread.join()
    finally:
        pacs.policy.start()
    assert all(pacs.call("GET", p, token).status_code == 200 for p in probe)


def test_audit_lines_from_orthanc_requests(pacs):
    token, claims = pacs.codec.issue(TokenKind.ACCESS, pacs.users["viewer"])
    pacs.call("DELETE", f"/studies/{ct_ids(pacs)[0]}", token)
    log = Path(pacs.config["STATE_DIR"]) / "logs" / "audit.log"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    mine = [line for line in lines if line["jti"] == claims["jti"]]
    assert mine and mine[-1]["decision"] == "deny" and mine[-1]["level"] == "study"
    assert mine[-1]["client"] == "127.0.0.1" and mine[-1]["user"] == "viewer"
    assert token not in log.read_text()


@pytest.mark.browser
def test_explorer_with_token_straight_from_orthanc(pacs, tmp_path):
    """Explorer with `?token=`: every request it makes carries the token (upload included)."""
    explorer = f"{pacs.orthanc.url}/app/explorer.html"
    label = f"Direct{uuid.uuid4().hex[:8]}"
    upload, study_uid = unique_dicom(tmp_path, label)
    with chromium_browser() as browser:
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(20_000)
        editor = ExplorerPage(page, explorer, pacs.token("editor", TokenKind.AUTH))
        editor.open()
        assert editor.upload(upload) == 200
        assert pacs.admin("POST", "/tools/lookup", data=study_uid)
        assert f"Study {label}" in editor.lookup(label)
        # Explorer's own navigations drop `?token=`; the extension keeps the token.
        page.goto(f"{explorer}#find-studies")
        page.wait_for_selector(f"#all-studies li:has-text('Study {label}')")
        # A download button navigates to ../instances/{id}/file: the token goes in the address.
        instance = pacs.admin("POST", "/tools/lookup", data=pydicom.dcmread(upload).SOPInstanceUID)[
            0
        ]["ID"]
        page.goto(f"{explorer}#instance?uuid={instance}")
        page.wait_for_selector("#instance.ui-page-active")
        with page.expect_download() as download:
            page.click("#instance-download-dicom")
        saved = tmp_path / "downloaded.dcm"
        download.value.save_as(saved)
        assert pydicom.dcmread(saved).SOPInstanceUID == pydicom.dcmread(upload).SOPInstanceUID
        assert editor.failed == []
        context.close()

        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(20_000)
        viewer = ExplorerPage(page, explorer, pacs.token("viewer"))
        viewer.open()
        assert f"Study {label}" in viewer.lookup(label)
        before = pacs.snapshot()
        refused, _ = unique_dicom(tmp_path, f"Refused{uuid.uuid4().hex[:8]}")
        assert viewer.upload(refused) == 403
        assert pacs.snapshot() == before
        context.close()


# --- the policy service as gunicorn serves it (uvicorn workers, services/policy_service/asgi.py)


def test_served_webhook_reads_chunked_and_refuses_oversized_bodies(pacs):
    url = f"{pacs.policy.url}/webhook"
    body = json.dumps(system_webhook_body(pacs.token("viewer"))).encode()
    assert requests.post(url, data=body, timeout=10).json()["granted"] is True
    # No Content-Length: the adapter reads the chunks and tells the app their length.
    chunked = requests.post(url, data=iter([body[:10], body[10:]]), timeout=10)
    assert chunked.json() == {"granted": True, "validity": 2, "role": "viewer"}
    # Past 64 KB the body is not parsed: the same token inside a padded body grants nothing.
    padded = json.dumps({**system_webhook_body(pacs.token("viewer")), "pad": "x" * 70_000})
    assert requests.post(url, data=padded, timeout=10).json() == {"granted": False, "validity": 0}


def test_served_authorize_sees_one_value_per_header(pacs):
    """A repeated header reaches the app joined with a comma (WSGI's rule), so two tokens
    are one malformed token, never the first or the last one alone."""
    token = pacs.token("viewer")
    url = f"{pacs.policy.url}/authorize"
    headers = {"X-Original-Method": "GET", "X-Original-URI": "/zhiva/system"}
    assert requests.get(url, headers={**headers, "token": token}, timeout=10).status_code == 204
    twice = http.client.HTTPConnection("127.0.0.1", int(pacs.policy.url.rsplit(":", 1)[1]))
    try:
        twice.putrequest("GET", "/authorize")
        for name, value in [*headers.items(), ("token", token), ("token", token)]:
            twice.putheader(name, value)
        twice.endheaders()
        assert twice.getresponse().status == 403
    finally:
        twice.close()


def _segments_received(sock: socket.socket) -> int:
    """TCP segments this client has received on the connection (Linux's tcpi_segs_in)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("I", info, 140)[0]


def test_served_answer_is_one_tcp_segment(pacs):
    """Status line, headers and body leave in one write (asgi.py's CoalescingProtocol).

    Calibrated on the connection itself: an empty 204 from /authorize is one write
    whatever the server does, so a webhook answer with a body must cost as many
    segments as that (uvicorn alone sends its head and body apart: one more each).
    Each request goes out in one `sendall`, so the server has nothing to acknowledge
    on its own between them.
    """
    token = pacs.token("viewer")
    body = json.dumps(system_webhook_body(token)).encode()
    webhook = (
        f"POST /webhook HTTP/1.1\r\nHost: policy\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    authorize = (
        "GET /authorize HTTP/1.1\r\nHost: policy\r\nX-Original-Method: GET\r\n"
        f"X-Original-URI: /zhiva/system\r\ntoken: {token}\r\n\r\n"
    ).encode()
    rounds = 40

    def segments_per_answer(sock: socket.socket, request: bytes) -> float:
        before = _segments_received(sock)
        for _ in range(rounds):
            sock.sendall(request)
            answer = http.client.HTTPResponse(sock)
            answer.begin()
            answer.read()
            assert answer.status in (200, 204)
        return (_segments_received(sock) - before) / rounds

    port = int(pacs.policy.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        segments_per_answer(sock, authorize)  # past the connection's first ACKs
        empty = segments_per_answer(sock, authorize)
        with_body = segments_per_answer(sock, webhook)
    assert with_body <= empty + 0.25, (with_body, empty)


def test_served_answer_before_connection_close_arrives_whole(pacs):
    """A response written just before the server closes (Connection: close) is not lost."""
    body = json.dumps(system_webhook_body(pacs.token("viewer")))
    for _ in range(20):
        answer = requests.post(
            f"{pacs.policy.url}/webhook", data=body, headers={"Connection": "close"}, timeout=10
        )
        assert answer.json() == {"granted": True, "validity": 2, "role": "viewer"}


def _syscalls_during(pid: int, names: str, work: Any) -> dict[str, int]:
    """Calls of `names` by every thread of `pid` while `work()` runs (strace -c, attached)."""
    with subprocess.Popen(
        ["strace", "-f", "-c", "-e", f"trace={names}", "-p", str(pid)],
        stderr=subprocess.PIPE,
        text=True,
    ) as tracer:
        assert tracer.stderr is not None
        # strace says "Process N attached" once it is in; only then does the count start.
        first = tracer.stderr.readline()
        assert "attached" in first, f"strace could not attach to Orthanc: {first!r}"
        time.sleep(0.5)  # the other threads are attached after the first one
        work()
        tracer.send_signal(signal.SIGINT)
        summary = tracer.stderr.read()
    counts = {}
    for line in summary.splitlines():
        fields = line.split()
        if fields and fields[-1] in names.split(",") and fields[-2].isdigit():
            counts[fields[-1]] = int(fields[-2])
    return counts


def test_filter_costs_no_memory_mapping_per_request(pacs):
    """Each Orthanc HTTP thread keeps its Python thread state (plugin.py's ThreadStates).

    Without it, orthanc-python builds a thread state for every filter call and frees it
    after: one mmap and one munmap per request, which halved Orthanc's throughput from
    two connections up (docs/BENCHMARKS.md). Four keep-alive clients, so that several
    Orthanc threads serve; the first round gives each thread its state, the measured
    rounds must then map nothing new.
    """
    token = pacs.token("viewer")
    rounds = 100
    statuses: list[int] = []

    def load() -> None:
        def client() -> None:
            with requests.Session() as session:
                for _ in range(rounds):
                    answer = session.get(
                        f"{pacs.orthanc.url}/system", headers={"token": token}, timeout=10
                    )
                    statuses.append(answer.status_code)

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    load()
    counts = _syscalls_during(pacs.orthanc.process.pid, "mmap,munmap", load)
    requests_made = 4 * rounds
    assert statuses == [200] * (2 * requests_made), sorted(set(statuses))
    assert counts.get("munmap", 0) < requests_made / 20, (counts, requests_made)
    assert counts.get("mmap", 0) < requests_made / 20, (counts, requests_made)
