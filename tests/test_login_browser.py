"""Sign-in and the admin token page in headless Chromium, against the running stack.

A stand-in viewer page on its own origin (`https://localhost:<port>`, always
allowed) links to /auth/sign-in like the zhiva viewer's "Login with zhiva";
the browser signs in, comes back with `token` and `state`, and redeems the
token once from the viewer's origin (a real CORS request). Screenshots of
every page go to `stack.output_dir` for a person to look at.

Chromium is told to accept the stack's self-made certificate
(`ignore_https_errors`): importing it into an NSS database would test
Chromium's certificate store, not this project.
"""

from __future__ import annotations

import json
import secrets
from urllib.parse import parse_qsl, quote, urlsplit

import pytest

from services.domain.tokens import TokenCodec, TokenKind
from tests.browser.chromium import chromium_browser
from tests.browser.viewer import RETURN_PARAMS, ViewerPage

pytestmark = [pytest.mark.browser, pytest.mark.stack]

PASSWORD = "Browser-Passw0rd!"
FAILED = "Invalid username or password"


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as chromium:
        yield chromium


@pytest.fixture
def page(browser, stack):
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 900, "height": 760})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.base_url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


@pytest.fixture
def viewer(stack):
    with ViewerPage(
        stack.base_url, stack.settings.tls_certificate, stack.settings.tls_private_key
    ) as viewer_page:
        yield viewer_page


@pytest.fixture
def codec(stack):
    return TokenCodec.from_settings(stack.settings, can_sign=False)


def shot(page, stack, name):
    stack.output_dir.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(stack.output_dir / f"{name}.png"), full_page=True)


def sign_in_from_viewer(page, stack, viewer, username, password, *, prefix):
    """Viewer → "Login with zhiva" → our form → back in the viewer; returns token and state."""
    page.goto(viewer.origin + "/")
    with page.expect_navigation():
        page.click("#login")
    assert page.url.startswith(stack.base_url + "/auth/sign-in?")
    assert page.locator("h1").inner_text() == "Sign in"
    assert viewer.origin in page.locator(".lead").inner_text()
    shot(page, stack, f"{prefix}sign-in")

    page.fill("#username", username)
    page.fill("#password", password)
    with page.expect_navigation(url=lambda url: url.startswith(viewer.origin + "/callback")):
        page.click("button[type=submit]")
    parts = urlsplit(page.url)
    values = dict(parse_qsl(parts.query, keep_blank_values=True))
    assert values["tab"] == "servers"  # the return address's own query survived
    return values["token"], json.loads(values["state"])


@pytest.mark.e2e
def test_sign_in_round_trip_and_single_redemption(page, stack, viewer, codec):
    username = f"reader-{secrets.token_hex(3)}"
    stack.create_user(username, PASSWORD, name="Browser Reader")

    # A wrong password first: the one failure message, the password field empty again.
    page.goto(viewer.sign_in_link)
    page.fill("#username", username)
    page.fill("#password", "Wrong-Passw0rd!")
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert page.url.startswith(stack.base_url + "/auth/sign-in")
    assert page.locator("#message").inner_text() == FAILED
    assert page.locator("#password").input_value() == ""
    shot(page, stack, "sign-in-failed")

    token, state = sign_in_from_viewer(page, stack, viewer, username, PASSWORD, prefix="")
    assert state == {"context": "zhiva_auth", "state": "", "params": RETURN_PARAMS}
    assert page.locator("h1").inner_text() == "Back in the viewer"
    shot(page, stack, "viewer-callback")

    claims = codec.verify(token, TokenKind.AUTH, origin=viewer.origin)
    assert claims["aud"] == viewer.origin and claims["username"] == username
    assert claims["tokenServer"] == stack.settings.public_base_url + "/auth/generate-access-token"

    # The viewer redeems the token from its own origin: CORS, the exposed Authorization header.
    redeem = """async ([url, token]) => {
        const r = await fetch(url, {method: "POST", headers: {Authorization: "Bearer " + token}});
        const authorization = r.headers.get("Authorization");
        return {status: r.status, authorization: authorization, body: await r.text()};
    }"""
    url = claims["tokenServer"].replace(stack.settings.public_base_url, stack.base_url)
    first = page.evaluate(redeem, [url, token])
    assert first["status"] == 200, first
    assert first["authorization"].startswith("Bearer ")
    access = codec.verify(
        first["authorization"][len("Bearer ") :], TokenKind.ACCESS, origin=viewer.origin
    )
    assert access["username"] == username
    assert codec.verify(first["body"], TokenKind.REFRESH)["username"] == username

    second = page.evaluate(redeem, [url, token])
    assert second["status"] == 403
    assert json.loads(second["body"]) == {"message": "Invalid Token"}


@pytest.mark.parametrize(
    "return_uri",
    [
        "https://evil.example.com/callback",
        "https://localhost.evil.com/",
        "//evil.example.com/",
        "https://evil.example.com@localhost/",
        "javascript:alert(document.domain)",
    ],
)
@pytest.mark.e2e
def test_foreign_return_uri_stays_on_our_error_page(page, stack, return_uri):
    response = page.goto(f"{stack.base_url}/auth/sign-in?return_uri={quote(return_uri, safe='')}")
    assert response.status == 400
    assert page.url.startswith(stack.base_url + "/auth/sign-in?")
    assert page.locator("h1").inner_text() == "Cannot sign in"
    assert page.locator("form").count() == 0
    page.wait_for_timeout(300)  # nothing on the page may move the browser on
    assert page.url.startswith(stack.base_url + "/auth/sign-in?")
    if return_uri.startswith("https://evil.example.com/"):
        shot(page, stack, "sign-in-foreign-return-uri")


@pytest.mark.e2e
def test_admin_token_page_then_the_new_user_signs_in(page, stack, viewer, codec):
    """/auth/token: create a user, confirm, copy the token; then that user signs in."""
    username = f"editor-{secrets.token_hex(3)}"
    page.goto(stack.base_url + "/auth/token")
    page.fill("#name", "Browser Editor")
    page.fill("#username", username)
    page.check("#can_edit")
    page.fill("#admin_password", stack.admin_password)
    shot(page, stack, "token-details")
    with page.expect_navigation():
        page.click("#submit")
    assert "/auth/token/confirm" in page.url
    assert username in page.locator("#confirm-text").inner_text()
    page.fill("#user_password", PASSWORD)
    page.fill("#user_password_again", PASSWORD)
    shot(page, stack, "token-confirm")
    with page.expect_navigation():
        page.click("#submit")

    shown = page.locator("#token-value").input_value().strip()
    page.click("#copy-token")
    page.wait_for_function("document.getElementById('copy-status').textContent.length > 0")
    assert page.locator("#copy-status").inner_text() == "Copied."
    assert page.evaluate("navigator.clipboard.readText()").strip() == shown
    shot(page, stack, "token-result")
    claims = codec.verify(shown, TokenKind.AUTH)
    assert claims["username"] == username and claims["canEditResource"] is True
    assert claims["pacs"] == stack.settings.public_base_url + "/zhiva/pacs"

    token, state = sign_in_from_viewer(page, stack, viewer, username, PASSWORD, prefix="editor-")
    signed = codec.verify(token, TokenKind.AUTH, origin=viewer.origin)
    assert signed["username"] == username and signed["canEditResource"] is True
    assert state["params"] == RETURN_PARAMS
