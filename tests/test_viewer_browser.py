"""OHIF at /viewer/ in Chromium against the real stack: sign-in, images, tokens, refusals.

The viewer's files and its install are tests/test_viewer_files.py's; here OHIF runs as
a user runs it, signed in at the stack's OpenID Connect provider:

- the study opens after the provider's sign-in form, its image is drawn (the viewport's
  pixels, not the DOM), the study list lists it; every DICOMweb request carries the
  token, nothing fails, no Content-Security-Policy violation, no console error;
- with one-minute access tokens, OHIF refreshes its token and goes on loading images
  after the first one expired; signing out from its menu ends the session, and its
  token is refused at the PACS within 5 s;
- a viewer's token, taken from OHIF's own page, may neither delete nor upload (403),
  and the viewer goes on working.

Frame requests come from OHIF's web workers, which Playwright's request events do not
see (NOTES.md): that those carried the token too is read from nginx's access log (no
/zhiva/ request answered but 200; a request without a valid token is answered 401) and
from the policy's audit log (which token each decision was made for).

Also here: several stacks share one installed release (VIEWER_DIR, as every test stack
does: tests/support/stack.py).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pytest
from pydicom.uid import generate_uid

from infra import viewer
from infra.viewer import install, viewer_files
from tests.browser.chromium import chromium_browser
from tests.browser.ohif import DRAWN_STD, viewport_pixels, wait_for_image
from tests.browser.provider import provider_sign_in
from tests.support.dicomweb import access_token, bearer_session, encode, wheel_dataset
from tests.support.names import unique
from tests.support.stack import Stack, shared_viewer_dir
from tests.support.studies import Study, ct_series, upload
from tests.support.viewer_builds import release_of, small_build

PASSWORD = "Viewer-Browser-Passw0rd!"
VIEWPORT = {"width": 1280, "height": 900}
REVOCATION_SECONDS = 5
SHORT_LIFETIME = 60
SETTINGS_MENU = 'button[aria-haspopup="menu"]:has(#icon-settings)'
# Console messages OHIF 3.13 writes on every start in headless Chromium, none an error:
# its renderer noting SwiftShader (no GPU here), its tool registry. Only `error`
# messages fail a test; these are listed so a new kind of message is seen.
OHIF_INFO_NOISE = (
    "CornerstoneRender:",
    "New 'Cornerstone3DTools@0.1' source added.",
    "Registering worklist route",
)


# --- a study with pixels -----------------------------------------------------------------------


def uploaded_ct(stack: Stack) -> Study:
    patient = unique("ZV").upper()
    uid, files = ct_series(patient)
    return Study(uid, upload(stack, files), patient)


def uploaded_compressed(stack: Stack) -> Study:
    """JPEG 2000 lossless and RLE MR images from the pydicom wheel, one study."""
    study_uid = generate_uid()
    datasets = [
        wheel_dataset(name, study_uid=study_uid)
        for name in ("MR_small_jp2klossless.dcm", "MR_small_RLE.dcm")
    ]
    patient = unique("ZVC").upper()
    for ds in datasets:
        ds.PatientID, ds.PatientName = patient, f"{patient}^Compressed"
    return Study(study_uid, upload(stack, [encode(ds) for ds in datasets]), patient)


# --- what a browser context saw ---------------------------------------------------------------


def claims(token: str) -> dict[str, Any]:
    """A JWT's claims, unverified (the stack verifies them; here they only name the token)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


@dataclass
class Watch:
    """Everything a context's pages did that a test judges afterwards."""

    base: str
    console: list[tuple[str, str, str]] = field(default_factory=list)  # type, text, URL
    page_errors: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    # DICOMweb requests the page saw (not the workers'): URL, Authorization header.
    dicomweb: list[tuple[str, str | None]] = field(default_factory=list)
    # Token endpoint answers: (grant type, access token, monotonic time).
    grants: list[tuple[str, str, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, context: Any) -> None:
        context.expose_binding(
            "reportViolation", lambda _source, text: self.violations.append(str(text))
        )
        context.add_init_script(
            "document.addEventListener('securitypolicyviolation', e => window.reportViolation("
            "`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));"
        )
        context.on("request", self._request)
        context.on("response", self._response)
        context.on("page", self.attach_page)

    def attach_page(self, page: Any) -> None:
        page.on("console", lambda m: self.console.append((m.type, m.text, m.location["url"])))
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))

    def _request(self, request: Any) -> None:
        if request.url.startswith(f"{self.base}/zhiva/"):
            self.dicomweb.append((request.url, request.headers.get("authorization")))

    def _response(self, response: Any) -> None:
        url = response.url
        if url.startswith(self.base) and response.status >= 400:
            self.failed.append(f"{response.status} {response.request.method} {url}")
        if url == f"{self.base}/auth/oauth/token" and response.status == 200:
            grant = dict(parse_qsl(response.request.post_data or ""))["grant_type"]
            token = response.json()["access_token"]
            with self.lock:
                self.grants.append((grant, token, time.monotonic()))

    def tokens(self) -> list[str]:
        with self.lock:
            return [token for _, token, _ in self.grants]

    def console_errors(self, expected_urls: tuple[str, ...] = ()) -> list[str]:
        return [
            f"{text} ({url})"
            for kind, text, url in self.console
            if kind == "error" and url not in expected_urls
        ]

    def assert_clean(self, expected_failures: tuple[str, ...] = ()) -> None:
        failed = [f for f in self.failed if f not in expected_failures]
        assert not failed, f"requests of the viewer failed: {failed}"
        assert not self.violations, f"Content-Security-Policy violations: {self.violations}"
        assert not self.page_errors, f"uncaught errors: {self.page_errors}"
        expected_urls = tuple(f.split(" ", 2)[2] for f in expected_failures)
        assert not self.console_errors(expected_urls), self.console_errors(expected_urls)
        csp = [text for _, text, _ in self.console if "Content Security Policy" in text]
        assert not csp, csp
        tokens = set(self.tokens())
        for url, authorization in self.dicomweb:
            assert authorization and authorization.startswith("Bearer "), url
            assert authorization.removeprefix("Bearer ") in tokens, f"not a token it got: {url}"
        other = [
            f"{kind}: {text}"
            for kind, text, _ in self.console
            if kind not in ("error", "debug", "log", "timeEnd", "info")
            and not text.startswith(OHIF_INFO_NOISE)
        ]
        if other:
            print("console messages (not errors):", *sorted(set(other)), sep="\n  ")


class NginxLog:
    """The stack's nginx access lines written since `mark` (path and status only: the
    log_format keeps tokens out of it)."""

    LINE = re.compile(r'"(?P<method>\S+) (?P<path>\S+)" (?P<status>\d{3}) ')

    def __init__(self, stack: Stack) -> None:
        self.path = stack.layout.log_dir / "nginx-access.log"
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def since_mark(self, prefix: str = "/zhiva/") -> list[tuple[str, str, int]]:
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            text = handle.read().decode(errors="replace")
        found = []
        for line in text.splitlines():
            match = self.LINE.search(line)
            if match and match["path"].startswith(prefix):
                found.append((match["method"], match["path"], int(match["status"])))
        return found


def audit_since(stack: Stack, offset: int) -> list[dict[str, Any]]:
    with (stack.layout.log_dir / "audit.log").open("rb") as handle:
        handle.seek(offset)
        return [json.loads(line) for line in handle.read().decode().splitlines() if line]


def audit_size(stack: Stack) -> int:
    return (stack.layout.log_dir / "audit.log").stat().st_size


# --- driving OHIF ---------------------------------------------------------------------------


def viewer_url(base: str, study_uid: str) -> str:
    return f"{base}/viewer/viewer?StudyInstanceUIDs={study_uid}"


def sign_in_to(page: Any, stack: Stack, url: str, username: str) -> None:
    """Open `url` of the viewer: the provider's form, signed in, back at `url`."""
    page.goto(url)
    page.wait_for_url(lambda u: u.startswith(f"{stack.base_url}/auth/oauth/authorize?"))
    request = dict(parse_qsl(urlsplit(page.url).query))
    assert request["client_id"] == "zhiva-viewer" and request["code_challenge_method"] == "S256"
    provider_sign_in(page, username, PASSWORD)
    page.wait_for_url(url, timeout=30_000)


def open_in_app(page: Any, url: str) -> None:
    """Go to `url` inside the running app (its router), as a link in it does: no reload,
    so no new sign-in; OHIF goes on with the tokens it holds."""
    page.evaluate(
        "url => { history.pushState({}, '', url); dispatchEvent(new PopStateEvent('popstate')); }",
        url,
    )


def shot(page: Any, stack: Stack, name: str) -> None:
    page.screenshot(path=str(stack.output_dir / f"{name}.png"))


def viewer_user(stack: Stack, prefix: str) -> str:
    username = unique(prefix)
    stack.create_user(username, PASSWORD, name="OHIF Viewer")
    return username


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium_browser() as chromium:
        yield chromium


@pytest.fixture
def context(browser: Any, stack: Stack) -> Iterator[tuple[Any, Watch]]:
    context = browser.new_context(ignore_https_errors=True, viewport=VIEWPORT)
    watch = Watch(stack.base_url)
    watch.attach(context)
    yield context, watch
    context.close()


@pytest.fixture(scope="module")
def ct_study(stack: Stack) -> Study:
    return uploaded_ct(stack)


# --- one installed release, several stacks ------------------------------------------------------


def test_stacks_installing_into_one_viewer_dir_at_once_unpack_one_release(tmp_path, capsys):
    tarball = small_build(tmp_path / "image")
    release = release_of(tarball)
    shared = tmp_path / "shared"
    errors: list[BaseException] = []

    def make_up(state: Path) -> None:
        try:
            install(state, release, tarball_dirs=(tarball.parent,), viewer_dir=shared)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    states = [tmp_path / f"state-{n}" for n in range(3)]
    threads = [threading.Thread(target=make_up, args=(state,)) for state in states]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    said = capsys.readouterr().out
    assert said.count("installed in") == 1, said  # one unpacked it; the others waited
    store = viewer.ViewerFiles(shared, release)
    assert store.installed()
    for state in states:
        own = viewer_files(state, release)
        assert own.version_dir.is_symlink() and own.version_dir.resolve() == store.version_dir
        assert own.installed()  # what nginx serves: STATE_DIR/viewer/<version>/dist
    # A stack that leaves the shared directory gets a copy of its own in place of the link.
    install(states[0], release, tarball_dirs=(tarball.parent,), viewer_dir=states[0] / "viewer")
    own = viewer_files(states[0], release)
    assert not own.version_dir.is_symlink() and own.installed()
    assert store.installed(), "the shared release stays for the other stacks"


def test_a_stacks_own_release_gives_way_to_the_shared_one(tmp_path):
    tarball = small_build(tmp_path / "image")
    release = release_of(tarball)
    state, shared = tmp_path / "state", tmp_path / "shared"
    install(state, release, tarball_dirs=(tarball.parent,))
    old = viewer.ViewerFiles(state / "viewer", viewer.Release("@ohif/app", "9.9.8", "x"))
    old.version_dir.mkdir()
    install(state, release, tarball_dirs=(tarball.parent,), viewer_dir=shared)
    own = viewer_files(state, release)
    assert own.version_dir.resolve() == (shared / release.version).resolve()
    assert not old.version_dir.exists()


@pytest.mark.stack
def test_every_test_stack_serves_the_one_release_of_the_run(stack):
    own = viewer_files(stack.settings.state_dir)
    assert stack.settings.viewer_dir == shared_viewer_dir()
    assert own.version_dir.is_symlink()
    assert own.version_dir.resolve() == (shared_viewer_dir() / viewer.OHIF_VERSION).resolve()
    assert own.app_config.is_file() and not own.app_config.is_symlink()  # the stack's own


# --- the viewer in Chromium -------------------------------------------------------------------


@pytest.mark.stack
@pytest.mark.browser
def test_ohif_signs_in_draws_the_study_and_lists_it(stack, context, ct_study):
    context, watch = context
    username = viewer_user(stack, "ohif")
    log = NginxLog(stack)
    log.mark()
    page = context.new_page()
    url = viewer_url(stack.base_url, ct_study.uid)
    started = time.monotonic()
    sign_in_to(page, stack, url, username)
    drawn, pixels = wait_for_image(page)
    print(f"first image {time.monotonic() - started:.1f}s after opening the link, incl. sign-in")
    shot(page, stack, "ohif-study")
    assert page.url == url, "OHIF must come back to the link it was opened with"
    # The disc on its checkerboard: bright and dark areas, many grey levels between.
    assert pixels.std() > DRAWN_STD and len(np.unique(pixels)) > 8
    assert (pixels > 200).mean() > 0.05 and (pixels < 50).mean() > 0.05

    # The study list (same app, no reload) shows it: filtered by its patient ID (`mrn`, a QIDO
    # PatientID), since the stack holds other tests' studies, more than a first page may show.
    open_in_app(page, f"{stack.base_url}/viewer/?mrn={ct_study.patient}")
    page.get_by_text(ct_study.patient, exact=False).first.wait_for(timeout=30_000)
    shot(page, stack, "ohif-study-list")

    [(grant, token, _)] = watch.grants
    assert grant == "authorization_code" and claims(token)["preferred_username"] == username
    watch.assert_clean()
    seen = {urlsplit(u).path for u, _ in watch.dicomweb}
    assert f"/zhiva/pacs/studies/{ct_study.uid}/series" in seen, seen
    # The workers' frame requests, and every other one, as nginx answered them.
    answered = log.since_mark()
    frames = [p for _, p, _ in answered if "/frames/" in p and ct_study.uid in p]
    assert frames, answered
    assert not [a for a in answered if a[2] != 200], answered
    print(f"{len(answered)} DICOMweb requests ({len(frames)} frames, seen by nginx only), all 200")


@pytest.fixture(scope="module")
def short_stack(tmp_path_factory, output_dir) -> Iterator[Stack]:
    """A stack whose OpenID Connect access tokens live one minute."""
    own = Stack.prepare(tmp_path_factory.mktemp("viewer-short"), "Admin-Passw0rd!", output_dir)
    own.env["OIDC_ACCESS_TOKEN_LIFETIME"] = str(SHORT_LIFETIME)
    started = time.monotonic()
    own.up()
    print(f"a stack with {SHORT_LIFETIME}-s tokens: up in {time.monotonic() - started:.1f}s")
    try:
        yield own
    finally:
        own.down()


def pacs_status(stack: Stack, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{stack.base_url}/zhiva/pacs/studies"
    return int(stack.http().get(url, headers=headers, timeout=10).status_code)


@pytest.mark.stack
@pytest.mark.browser
def test_ohif_refreshes_its_token_keeps_loading_and_signs_out(short_stack, browser):
    stack = short_stack
    first_study, second_study = uploaded_ct(stack), uploaded_compressed(stack)
    username = viewer_user(stack, "ohif-short")
    context = browser.new_context(ignore_https_errors=True, viewport=VIEWPORT)
    watch = Watch(stack.base_url)
    watch.attach(context)
    try:
        log = NginxLog(stack)
        log.mark()
        audit_offset = audit_size(stack)
        page = context.new_page()
        sign_in_to(page, stack, viewer_url(stack.base_url, first_study.uid), username)
        wait_for_image(page)
        [(_, first, signed_in)] = watch.grants
        lifetime = claims(first)["exp"] - claims(first)["iat"]
        assert lifetime == SHORT_LIFETIME

        # Past the first token's expiry: OHIF refreshed it (the provider's refresh grant).
        page.wait_for_timeout(1000 * (SHORT_LIFETIME + 10 - (time.monotonic() - signed_in)))
        assert pacs_status(stack, first) == 401, "the first token has expired"
        refreshed = [(t, at) for grant, t, at in watch.grants if grant == "refresh_token"]
        assert refreshed, f"no refresh_token grant: {[g for g, _, _ in watch.grants]}"
        print(f"refreshes at {[round(at - signed_in) for _, at in refreshed]} s after sign-in")

        # Another study, opened in the app: drawn with the refreshed token.
        switched = time.monotonic()
        open_in_app(page, viewer_url(stack.base_url, second_study.uid))
        _, pixels = wait_for_image(page)
        assert len(np.unique(pixels)) > 8
        shot(page, stack, "ohif-after-refresh")
        current = watch.tokens()[-1]
        assert current != first and claims(current)["exp"] > time.time()
        # Its requests, workers' frames included, passed nginx's check: none was answered
        # 401 (an expired or missing token) or otherwise refused.
        answered = log.since_mark()
        answered.remove(("GET", "/zhiva/pacs/studies", 401))  # the expired token, tried above
        second = [a for a in answered if second_study.uid in a[1]]
        assert [a for a in second if "/frames/" in a[1]], answered
        assert not [a for a in answered if a[2] != 200], answered
        # The policy decided them for the refreshed tokens, none for the expired one.
        decided = [
            entry
            for entry in audit_since(stack, audit_offset)
            if entry["user"] == username and second_study.uid in entry["path"]
        ]
        refreshed_jtis = {claims(t)["jti"] for t, _ in refreshed}
        assert decided and {e["jti"] for e in decided} <= refreshed_jtis, decided
        print(f"second study drawn {time.monotonic() - switched:.1f}s after opening it")
        watch.assert_clean()

        # Sign out from OHIF's menu, with a token that has time left (not refused by expiry).
        while claims(watch.tokens()[-1])["exp"] - time.time() < 3 * REVOCATION_SECONDS:
            page.wait_for_timeout(500)
        last = watch.tokens()[-1]
        assert pacs_status(stack, last) == 200
        page.locator(SETTINGS_MENU).click()
        page.get_by_role("menuitem", name="Logout").click()
        clicked = time.monotonic()
        page.wait_for_url(lambda u: u.startswith(f"{stack.base_url}/auth/oauth/logout"))
        page.wait_for_load_state()
        shot(page, stack, "ohif-signed-out")
        status = pacs_status(stack, last)
        while status != 403 and time.monotonic() - clicked < REVOCATION_SECONDS:
            page.wait_for_timeout(100)
            status = pacs_status(stack, last)
        refused_after = time.monotonic() - clicked
        assert status == 403, f"the signed-out token still answered {status}"
        print(f"signed out: the token refused {refused_after:.2f}s after Logout was clicked")
        # The provider's session is over: the viewer asks for the password again.
        page.goto(viewer_url(stack.base_url, first_study.uid))
        page.wait_for_url(lambda u: u.startswith(f"{stack.base_url}/auth/oauth/authorize?"))
        assert page.locator("#password").count() == 1
    finally:
        context.close()


@pytest.mark.stack
@pytest.mark.browser
def test_a_viewer_may_not_delete_or_upload_from_ohif_and_it_keeps_working(stack, context, ct_study):
    """OHIF 3.13 has no delete button, and its upload dialog only with `dicomUploadEnabled`
    (not configured): the requests are made from OHIF's page, with the token it holds."""
    context, watch = context
    username = viewer_user(stack, "ohif-refused")
    log = NginxLog(stack)
    log.mark()
    page = context.new_page()
    url = viewer_url(stack.base_url, ct_study.uid)
    sign_in_to(page, stack, url, username)
    _, before = wait_for_image(page)
    issuer = stack.settings.oidc_issuer
    instance = ct_series(ct_study.patient, slices=1, study_uid=ct_study.uid)[1][0]
    refused = page.evaluate(
        """async ([issuer, studyId, instance]) => {
            const user = JSON.parse(sessionStorage.getItem(`oidc.user:${issuer}:zhiva-viewer`));
            const headers = {Authorization: `Bearer ${user.access_token}`};
            const file = Uint8Array.from(atob(instance), c => c.charCodeAt(0));
            const boundary = 'zhiva-viewer-test';
            const head = `--${boundary}\\r\\nContent-Type: application/dicom\\r\\n\\r\\n`;
            const stow = new Blob([head, file, `\\r\\n--${boundary}--\\r\\n`]);
            const type = `multipart/related; type="application/dicom"; boundary=${boundary}`;
            const answers = {};
            for (const [name, path, init] of [
                ['delete', `/zhiva/studies/${studyId}`, {method: 'DELETE'}],
                ['stow', '/zhiva/pacs/studies', {method: 'POST', body: stow,
                    headers: {'Content-Type': type}}],
                ['upload', '/zhiva/instances', {method: 'POST', body: file,
                    headers: {'Content-Type': 'application/dicom'}}],
            ]) {
                const answer = await fetch(path, {...init,
                    headers: {...headers, ...(init.headers || {})}});
                answers[name] = answer.status;
            }
            return answers;
        }""",
        [issuer, ct_study.orthanc_id, base64.b64encode(instance).decode()],
    )
    assert refused == {"delete": 403, "stow": 403, "upload": 403}, refused

    # Nothing changed in the PACS, and the viewer goes on: the next slices are drawn.
    editor = bearer_session(stack, access_token(stack, can_edit=True))
    instances = editor.get(
        f"{stack.base_url}/zhiva/pacs/studies/{ct_study.uid}/instances", timeout=30
    )
    assert instances.status_code == 200 and len(instances.json()) == 12
    page.locator("canvas.cornerstone-canvas").first.hover()
    for _ in range(5):
        page.mouse.wheel(0, 120)
        page.wait_for_timeout(200)
    after = viewport_pixels(page)
    assert after.std() > DRAWN_STD and np.abs(after - before).mean() > 1, "no other slice drawn"
    shot(page, stack, "ohif-after-refusals")
    base = stack.base_url
    deliberate = (
        f"403 DELETE {base}/zhiva/studies/{ct_study.orthanc_id}",
        f"403 POST {base}/zhiva/pacs/studies",
        f"403 POST {base}/zhiva/instances",
    )
    watch.assert_clean(expected_failures=deliberate)
    answered = log.since_mark()
    assert sorted(a for a in answered if a[2] != 200) == sorted(
        [
            ("DELETE", f"/zhiva/studies/{ct_study.orthanc_id}", 403),
            ("POST", "/zhiva/pacs/studies", 403),
            ("POST", "/zhiva/instances", 403),
        ]
    ), answered
