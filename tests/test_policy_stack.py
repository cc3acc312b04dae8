"""The access policy through the whole stack: nginx (TLS, auth_request) in front of Orthanc.

Every row goes through `https://…/zhiva/…`; what Orthanc holds is then read
straight from its port with an admin token, so a grant means Orthanc did it
and a deny means its data is unchanged.
"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

import pytest
import requests

from services.domain.tokens import TokenCodec, TokenKind
from services.policy_service.decision import MAX_VALIDITY_SECONDS
from services.stores.accounts import identity
from services.stores.revocation import RevocationStore
from tests.browser.chromium import chromium_browser
from tests.support.explorer import ExplorerPage, unique_dicom
from tests.support.processes import wait_until
from tests.support.revocation import revoke_and_wait
from tests.support.spelled import send_spelled

pytestmark = pytest.mark.stack

PASSWORD = "Policy-Passw0rd!"


class Through:
    """Requests through nginx, checks straight against Orthanc."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.codec = TokenCodec.from_settings(stack.settings, can_sign=True)
        self.redis = stack.redis()
        self.revocations = RevocationStore(self.redis, stack.settings.redis_key_prefix)
        self.http = stack.http()
        self.users: dict[str, Any] = {}
        suffix = secrets.token_hex(3)
        for role in ("viewer", "editor", "admin"):
            user = stack.create_user(
                f"policy-{role}-{suffix}",
                PASSWORD,
                can_edit=role != "viewer",
                is_admin=role == "admin",
            )
            self.users[role] = identity(user)
        self.admin_token = self.token("admin")

    def token(self, role: str, kind: TokenKind = TokenKind.ACCESS, **kw: Any) -> str:
        return self.codec.issue(kind, self.users[role], **kw)[0]

    def nginx(
        self, method: str, path: str, token: str | None = None, *, how: str = "header", **kw: Any
    ) -> requests.Response:
        base = self.stack.base_url + "/zhiva"
        return send_spelled(self.http, method, base, path, token, how=how, **kw)

    def orthanc(self, method: str, path: str, **kw: Any) -> Any:
        response = requests.request(
            method,
            self.stack.orthanc_url + path,
            timeout=20,
            headers={"token": self.admin_token},
            **kw,
        )
        assert response.ok, (method, path, response.status_code)
        return response.json() if response.content else None

    def study(self, study_uid: str) -> str | None:
        found = self.orthanc("POST", "/tools/lookup", data=study_uid)
        return found[0]["ID"] if found else None

    def snapshot(self) -> dict[str, Any]:
        studies = sorted(self.orthanc("GET", "/studies"))
        return {
            "studies": studies,
            "instances": sorted(self.orthanc("GET", "/instances")),
            "modalities": self.orthanc("GET", "/modalities"),
            "tags": {s: self.orthanc("GET", f"/studies/{s}")["MainDicomTags"] for s in studies},
        }


@pytest.fixture(scope="module")
def through(stack):
    helper = Through(stack)
    yield helper
    helper.http.close()
    helper.redis.close()


@pytest.fixture(scope="module")
def ct_study(through, tmp_path_factory):
    path, study_uid = unique_dicom(tmp_path_factory.mktemp("dicom"), "PolicyBase")
    through.orthanc("POST", "/instances", data=path.read_bytes())
    return through.study(study_uid), study_uid


@pytest.mark.parametrize("role", ["viewer", "editor", "admin"])
@pytest.mark.parametrize("how", ["header", "bearer", "query"])
def test_reads_through_nginx(through, ct_study, role, how):
    study, study_uid = ct_study
    token = through.token(role)
    for path in (
        "/studies",
        f"/studies/{study}",
        f"/studies/{study}/archive",
        "/pacs/studies",
        f"/pacs/studies?StudyInstanceUID={study_uid}",
        f"/pacs/studies/{study_uid}/metadata",
    ):
        response = through.nginx("GET", path, token, how=how)
        assert response.status_code == 200, (path, response.status_code)
    if how != "query":
        found = through.nginx(
            "POST", "/tools/find", token, how=how, json={"Level": "Study", "Query": {}}
        )
        assert found.status_code == 200 and study in found.json()


@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("none", 401),
        ("expired", 401),
        ("forged", 403),
        ("revoked", 403),
        ("used auth", 403),
        ("refresh", 403),
        ("wrong origin", 403),
    ],
)
def test_bad_tokens_through_nginx(through, ct_study, state, status, tmp_path):
    token: str | None = None
    headers: dict[str, str] = {}
    if state == "expired":
        token = through.token("admin", now=int(time.time()) - 48 * 3600)
    elif state == "forged":
        other = TokenCodec.from_settings(through.stack.settings, can_sign=True)
        from joserfc.jwk import RSAKey

        other.private_key = RSAKey.generate_key(2048)
        token = other.issue(TokenKind.ACCESS, through.users["admin"])[0]
    elif state in ("revoked", "used auth"):
        kind = TokenKind.ACCESS if state == "revoked" else TokenKind.AUTH
        token, claims = through.codec.issue(kind, through.users["admin"])
        policy = f"http://127.0.0.1:{through.stack.settings.policy_service_port}"
        revoke_and_wait(through.revocations, policy, token, claims, once=kind is TokenKind.AUTH)
    elif state == "refresh":
        token = through.token("admin", TokenKind.REFRESH)
    elif state == "wrong origin":
        token = through.token("admin", audience="https://app.zhiva.ai")
        headers = {"Origin": "https://evil.zhiva.ai"}
    before = through.snapshot()
    upload, _ = unique_dicom(tmp_path, f"Bad{uuid.uuid4().hex[:8]}")
    for method, path, kw in [
        ("GET", "/studies", {}),
        ("GET", "/pacs/studies", {}),
        ("POST", "/instances", {"data": upload.read_bytes()}),
        ("DELETE", f"/studies/{ct_study[0]}", {}),
    ]:
        response = through.nginx(method, path, token, headers=headers, **kw)
        assert response.status_code == status, (method, path)
    assert through.snapshot() == before


def test_viewer_writes_refused_through_nginx(through, ct_study, tmp_path):
    token = through.token("viewer")
    study = ct_study[0]
    upload, _ = unique_dicom(tmp_path, "ViewerUpload")
    before = through.snapshot()
    for method, path, kw in [
        ("POST", "/instances", {"data": upload.read_bytes()}),
        (
            "POST",
            f"/studies/{study}/modify",
            {"json": {"Replace": {"StudyDescription": "x"}, "Force": True}},
        ),
        ("POST", f"/studies/{study}/anonymize", {"json": {}}),
        ("DELETE", f"/studies/{study}", {}),
        ("POST", "/tools/execute-script", {"data": "print(1)"}),
        ("PUT", "/modalities/evil", {"json": {"AET": "E", "Host": "127.0.0.1", "Port": 1}}),
        ("POST", "/tools/reset", {}),
    ]:
        assert through.nginx(method, path, token, **kw).status_code == 403, path
    assert through.snapshot() == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "//instances"),
        ("POST", "/instances/"),
        ("POST", "/INSTANCES"),
        ("POST", "/%69nstances"),
        ("POST", "/tools/find/../../instances"),
        ("POST", "/tools/find/%2e%2e/%2E%2E/instances"),
        ("POST", "/tools/find/..%2F..%2Finstances"),
        ("POST", "/instances%2F..%2Ftools%2Ffind"),
        ("POST", "/instances?/../tools/find"),
        ("POST", "/pacs//studies/"),
        ("POST", "/../zhiva/instances"),
        ("POST", "/app/../instances"),
        ("POST", "/app/..%2Finstances"),
    ],
)
def test_write_spellings_through_nginx(through, method, path, tmp_path):
    token = through.token("viewer")
    upload, _ = unique_dicom(tmp_path, f"Spelling{uuid.uuid4().hex[:8]}")
    before = through.snapshot()
    response = through.nginx(method, path, token, data=upload.read_bytes())
    assert response.status_code in (400, 403, 404), response.status_code
    assert through.snapshot() == before


def test_editor_writes_through_nginx(through, tmp_path):
    token = through.token("editor", TokenKind.AUTH)  # an unredeemed auth token opens the PACS
    upload, study_uid = unique_dicom(tmp_path, "EditorUpload")
    assert through.nginx("POST", "/instances", token, data=upload.read_bytes()).status_code == 200
    study = through.study(study_uid)
    assert study
    anonymized = through.nginx("POST", f"/studies/{study}/anonymize", token, json={})
    assert anonymized.status_code == 200
    for target in (anonymized.json()["ID"], study):
        assert through.nginx("DELETE", f"/studies/{target}", token).status_code == 200
        assert target not in through.orthanc("GET", "/studies")
    before = through.snapshot()
    assert through.nginx("POST", "/tools/reset", token).status_code == 403
    assert (
        through.nginx(
            "PUT", "/modalities/x", token, json={"AET": "X", "Host": "h", "Port": 1}
        ).status_code
        == 403
    )
    assert through.snapshot() == before


def test_admin_system_routes_through_nginx(through):
    token = through.admin_token
    modality = {"AET": "OTHER", "Host": "127.0.0.1", "Port": 1104}
    assert through.nginx("PUT", "/modalities/policy-test", token, json=modality).status_code == 200
    assert "policy-test" in through.orthanc("GET", "/modalities")
    assert through.nginx("DELETE", "/modalities/policy-test", token).status_code == 200
    assert through.nginx("POST", "/tools/execute-script", token, data="x").status_code == 403


def test_revocation_bites_within_5_seconds_through_nginx(through):
    token, claims = through.codec.issue(TokenKind.ACCESS, through.users["viewer"])
    assert through.nginx("GET", "/studies", token).status_code == 200
    through.revocations.revoke(claims["jti"], claims["exp"])
    start = time.monotonic()
    while through.nginx("GET", "/studies", token).status_code == 200:
        assert time.monotonic() - start < 5
        time.sleep(0.1)


def test_policy_stopped_denies_everything_then_recovers(through, stack):
    token = through.admin_token
    assert through.nginx("GET", "/studies", token).status_code == 200
    result = stack.supervisorctl("stop", "policy")
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        # Grants cached by nginx and the Orthanc plugin run out: 2 s, which nginx counts
        # from the whole second the grant came in, so up to one more.
        time.sleep(MAX_VALIDITY_SECONDS + 1.1)
        assert through.nginx("GET", "/studies", token).status_code >= 400
        assert through.nginx("GET", "/system", token).status_code >= 400
        direct = requests.get(f"{stack.orthanc_url}/studies", headers={"token": token}, timeout=10)
        assert direct.status_code == 403
    finally:
        result = stack.supervisorctl("start", "policy")
        assert result.returncode == 0, result.stdout + result.stderr
    wait_until(
        lambda: through.nginx("GET", "/studies", token).status_code == 200,
        30,
        "access after the policy service is back",
    )
    direct = requests.get(f"{stack.orthanc_url}/studies", headers={"token": token}, timeout=10)
    assert direct.status_code == 200


@pytest.mark.browser
def test_explorer_with_token_through_nginx(through, stack, tmp_path):
    """Explorer opened with an editor's auth token uploads and browses;
    a viewer's token browses and its upload is refused."""
    explorer = f"{stack.base_url}/zhiva/app/explorer.html"
    label = f"Browser{uuid.uuid4().hex[:8]}"
    upload, study_uid = unique_dicom(tmp_path, label)
    with chromium_browser() as browser:
        context = browser.new_context(ignore_https_errors=True)
        page = context.new_page()
        page.set_default_timeout(20_000)
        editor = ExplorerPage(page, explorer, through.token("editor", TokenKind.AUTH))
        editor.open()
        assert editor.upload(upload) == 200
        assert through.study(study_uid)
        assert f"Study {label}" in editor.lookup(label)
        page.screenshot(path=str(stack.output_dir / "policy-explorer-editor.png"), full_page=True)
        assert editor.failed == []
        context.close()

        context = browser.new_context(ignore_https_errors=True)
        page = context.new_page()
        page.set_default_timeout(20_000)
        viewer = ExplorerPage(page, explorer, through.token("viewer", TokenKind.AUTH))
        viewer.open()
        assert f"Study {label}" in viewer.lookup(label)
        refused, _ = unique_dicom(tmp_path, f"Refused{uuid.uuid4().hex[:8]}")
        before = through.snapshot()
        assert viewer.upload(refused) == 403
        assert through.snapshot() == before
        page.screenshot(path=str(stack.output_dir / "policy-explorer-viewer.png"), full_page=True)
        context.close()
