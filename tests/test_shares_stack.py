"""Share links through the whole stack: nginx, the token and login services, the policy, Orthanc.

tests/test_shares_api.py holds the API, the link page and the CLI to every rule at
the Flask level, with an Orthanc of its own; here a share is made as a user makes
one (`POST /auth/shares` through nginx, `make admin ARGS="shares create …"`), and
its token is spent at the PACS, where the policy and Orthanc's plugin judge it: its
study's DICOMweb opens, another study does not, and a revocation bites within 5
seconds. The link opens the viewer's share entry (`/viewer/share/…`), which loads
its own configuration (no sign-in).
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.dicomweb import access_token, bearer_session, dicomweb, wheel_dataset
from tests.support.stack import Stack

pytestmark = pytest.mark.stack

# How long a revocation may take to bite at the PACS (docs/ARCHITECTURE.md).
REVOCATION_SECONDS = 5


@pytest.fixture(scope="module")
def editor(stack: Stack) -> str:
    return access_token(stack, can_edit=True)


@pytest.fixture(scope="module")
def studies(stack: Stack, editor: str) -> tuple[str, str]:
    """Two stored studies' StudyInstanceUIDs: the one shared, and another."""
    uids = []
    for name in ("CT_small.dcm", "MR_small.dcm"):
        dataset = wheel_dataset(name)
        dicomweb(stack, editor).store_instances([dataset])
        uids.append(str(dataset.StudyInstanceUID))
    return uids[0], uids[1]


def make_share(stack: Stack, token: str, body: dict[str, Any]) -> Any:
    return bearer_session(stack, token).post(f"{stack.base_url}/auth/shares", json=body, timeout=30)


def metadata(stack: Stack, token: str, study_uid: str) -> int:
    session = bearer_session(stack, token)
    url = f"{stack.base_url}/zhiva/pacs/studies/{study_uid}/metadata"
    return session.get(url, timeout=30).status_code


def refused_within(check, seconds: float = REVOCATION_SECONDS + 1) -> float:  # type: ignore[no-untyped-def]
    """Seconds until `check()` (a status) is a refusal; fails past `seconds`."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if check() in (401, 403):
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"still granted after {seconds}s")


def test_a_share_token_reads_its_study_and_nothing_else(stack, editor, studies):
    shared, other = studies
    made = make_share(stack, editor, {"study": shared, "expiresIn": 3600})
    assert made.status_code == 201, made.text
    body = made.json()
    token = body["token"]

    assert metadata(stack, token, shared) == 200
    assert metadata(stack, token, other) == 403
    session = bearer_session(stack, token)
    qido = session.get(
        f"{stack.base_url}/zhiva/pacs/studies", params={"StudyInstanceUID": shared}, timeout=30
    )
    assert qido.status_code == 200, qido.text
    assert [s["0020000D"]["Value"][0] for s in qido.json()] == [shared]
    for method, path in (
        ("GET", "/zhiva/pacs/studies"),
        ("GET", "/zhiva/system"),
        ("GET", "/zhiva/patients"),
        ("POST", "/zhiva/tools/find"),
        ("DELETE", f"/zhiva/pacs/studies/{shared}"),
    ):
        answer = session.request(method, stack.base_url + path, timeout=30)
        assert answer.status_code == 403, (method, path, answer.status_code)

    # The editor's listing has it; its creator revokes it, and the PACS refuses the token.
    listing = bearer_session(stack, editor).get(f"{stack.base_url}/auth/shares", timeout=30)
    assert body["id"] in [s["id"] for s in listing.json()["shares"]]
    assert token not in listing.text
    gone = bearer_session(stack, editor).delete(
        f"{stack.base_url}/auth/shares/{body['id']}", timeout=30
    )
    assert gone.status_code == 204
    refused_within(lambda: metadata(stack, token, shared))


def test_viewers_cannot_share_and_unknown_studies_are_404(stack, studies):
    viewer = access_token(stack)
    refused = make_share(stack, viewer, {"study": studies[0]})
    assert (refused.status_code, refused.json()) == (
        403,
        {"message": "Viewers cannot share studies"},
    )
    editor = access_token(stack, can_edit=True)
    missing = make_share(stack, editor, {"study": "1.2.3.4.5.6.7.8.9"})
    assert (missing.status_code, missing.json()) == (404, {"message": "Study not found"})


def test_the_link_opens_the_share_viewer(stack, editor, studies):
    made = make_share(stack, editor, {"study": studies[0]}).json()
    http = stack.http()
    opened = http.get(made["url"], allow_redirects=False, timeout=30)
    assert opened.status_code == 303, opened.text
    location = opened.headers["Location"]
    assert urlsplit(location).path == "/viewer/share/viewer"
    query = parse_qs(urlsplit(location).query)
    assert query["StudyInstanceUIDs"] == [studies[0]]
    assert metadata(stack, query["token"][0], studies[0]) == 200

    page = http.get(stack.base_url + location, timeout=30)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert 'src="/viewer/app-config-share.js"' in page.text
    assert 'src="/viewer/app-config.js"' not in page.text
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Referrer-Policy"] == "no-referrer"
    config = http.get(f"{stack.base_url}/viewer/app-config-share.js", timeout=30)
    assert config.status_code == 200
    assert '"/viewer/share"' in config.text and "showStudyList: false" in config.text
    assert "oidc" not in config.text.split("dataSources")[1]
    # The signed-in viewer keeps its own entry and configuration.
    index = http.get(f"{stack.base_url}/viewer/viewer", timeout=30)
    assert 'src="/viewer/app-config.js"' in index.text

    unknown = http.get(f"{stack.base_url}/auth/share/{'0' * 32}", timeout=30)
    assert unknown.status_code == 404 and "This link is unknown" in unknown.text
    pinned = make_share(stack, editor, {"study": studies[0], "pin": "2468"}).json()
    form = http.get(pinned["url"], allow_redirects=False, timeout=30)
    assert form.status_code == 200 and 'name="pin"' in form.text


@pytest.mark.browser
def test_chromium_opens_the_link_and_ohif_draws_the_study_without_sign_in(stack, editor):
    """The whole path a recipient takes: the link, the viewer's share entry, OHIF reading the
    study with the share token (its address bar left without it), an image drawn."""
    from tests.browser.chromium import chromium_browser
    from tests.browser.ohif import wait_for_image
    from tests.support.studies import ct_series, upload

    study_uid, files = ct_series("SHARE")
    upload(stack, files)
    made = make_share(stack, editor, {"study": study_uid, "pin": "1357"}).json()
    with chromium_browser() as browser:
        context = browser.new_context(ignore_https_errors=True)  # type: ignore[attr-defined]
        try:
            page = context.new_page()
            statuses: list[tuple[int, str]] = []
            page.on("response", lambda r: statuses.append((r.status, r.url)))
            page.goto(made["url"])
            page.fill("input[name=pin]", "1357")
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/viewer/share/viewer" in url, timeout=30_000)
            wait_for_image(page)
            page.screenshot(path=str(stack.output_dir / "share-viewer.png"))
            assert "/auth/oauth/" not in page.url and "token=" not in page.url
            assert f"StudyInstanceUIDs={study_uid}" in page.url
            dicomweb = [(status, url) for status, url in statuses if "/zhiva/" in url]
            # OHIF also looks for the patient's other studies (QIDO by PatientID): a share
            # reads its one study, so that search alone is refused, and OHIF goes on.
            failed = [(s, u) for s, u in dicomweb if s != 200 and "00100020=" not in u]
            assert dicomweb and not failed, failed
        finally:
            context.close()


@pytest.mark.e2e
def test_the_cli_shares_and_revokes_on_the_stack(stack, studies):
    made = stack.make("admin", ARGS=f"shares create --study {studies[0]} --expires 1h")
    answer = json.loads(made.stdout.strip().splitlines()[-1])
    assert metadata(stack, answer["token"], studies[0]) == 200
    assert metadata(stack, answer["token"], studies[1]) == 403

    listing = stack.make("admin", ARGS="shares list").stdout
    lines = [json.loads(line) for line in listing.splitlines() if line.startswith("{")]
    mine = [line for line in lines if line["id"] == answer["id"]]
    assert mine and mine[0]["createdBy"] == "(zhiva-admin)" and not mine[0]["revoked"]
    assert answer["token"] not in listing

    stack.make("admin", ARGS=f"shares revoke {answer['id']}")
    refused_within(lambda: metadata(stack, answer["token"], studies[0]))
