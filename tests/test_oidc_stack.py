"""The OpenID Connect provider through the whole stack, driven by two client libraries of its own.

tests/test_oidc_provider.py holds the provider to its rules at the Flask level;
here the same flows go through nginx (TLS, routing, CORS) to the login and token
services, and the tokens they give are spent at the PACS, where the policy and
Orthanc judge them:

- authlib's requests client (`OAuth2Session`): authorization code with PKCE,
  QIDO, a viewer's DELETE refused, refresh, revocation, RP-initiated logout;
  and a removed client's tokens refused;
- the device flow from a script, approved in Chromium, then dicomweb-client
  (`device_sign_in` and `search_studies` below are what a notebook runs);
- oidc-client-ts (what OHIF signs in with) in Chromium on another origin
  (tests/browser/oidc_client_ts.py): redirect sign-in, QIDO from that origin
  (CORS), `signinSilent` with the refresh token, `signoutRedirect`.

Clients are registered with `make admin ARGS="clients add …"` as an
administrator does. Every revocation is checked by polling the PACS: it must
bite within 5 seconds (docs/ARCHITECTURE.md, "Revoked").
"""

from __future__ import annotations

import json
import queue
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from dicomweb_client import DICOMwebClient
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.browser.chromium import chromium_browser
from tests.browser.oidc_client_ts import ClientPage, oidc_client_ts_bundle
from tests.browser.provider import provider_sign_in
from tests.support.dicomweb import access_token, bearer_session, encode, wheel_dataset
from tests.support.names import unique
from tests.support.stack import Stack

pytestmark = pytest.mark.stack

PASSWORD = "Oidc-Stack-Passw0rd!"
SCOPE = "openid profile offline_access"
CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
STUDY_INSTANCE_UID = "0020000D"
# How long a revocation may take to bite at the PACS (docs/ARCHITECTURE.md).
REVOCATION_SECONDS = 5


# --- what a notebook user runs (the README shows these two) ------------------------------------


def device_sign_in(
    issuer: str,
    client_id: str,
    show: Callable[[str, str], None] = lambda url, code: print(f"Open {url} (code {code})"),
) -> dict[str, Any]:
    """Sign a script in as you (OAuth 2.0 device flow): approve the code in any browser.

    `issuer` is `https://HOST/auth`; a stack with a self-made certificate needs
    `REQUESTS_CA_BUNDLE=…/trusted.crt` in the environment. The answer has `access_token`
    and `refresh_token` (no ID token: the device grant gives none).
    """
    config = requests.get(f"{issuer}/.well-known/openid-configuration", timeout=30).json()
    started = requests.post(
        config["device_authorization_endpoint"],
        data={"client_id": client_id, "scope": "openid profile offline_access"},
        timeout=30,
    )
    started.raise_for_status()
    grant = started.json()
    show(grant["verification_uri_complete"], grant["user_code"])
    interval = grant.get("interval", 5)
    deadline = time.monotonic() + grant["expires_in"]
    while time.monotonic() < deadline:
        time.sleep(interval)
        answer = requests.post(
            config["token_endpoint"],
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                "device_code": grant["device_code"],
                "client_id": client_id,
            },
            timeout=30,
        )
        if answer.status_code == 200:
            return answer.json()
        error = answer.json().get("error")
        if error == "slow_down":
            interval += 5
        elif error != "authorization_pending":
            raise RuntimeError(f"sign-in refused: {error}")
    raise TimeoutError("the code was not approved in time")


def search_studies(pacs_url: str, access_token: str) -> list[dict[str, Any]]:
    """The studies the signed-in user may read (`pacs_url` is `https://HOST/zhiva/pacs`)."""
    with requests.Session() as session:
        client = DICOMwebClient(
            url=pacs_url, session=session, headers={"Authorization": f"Bearer {access_token}"}
        )
        return client.search_for_studies()


# --- helpers -----------------------------------------------------------------------------------


def register_client(
    stack: Stack, client_id: str, redirect_uri: str, post_logout_redirect_uri: str
) -> None:
    args = (
        f"clients add --client-id {client_id} --redirect-uri {redirect_uri} "
        f"--post-logout-redirect-uri {post_logout_redirect_uri}"
    )
    output = stack.make("admin", ARGS=args).stdout
    assert json.loads(output.strip().splitlines()[-1]) == {"client_id": client_id}


def study_uids(answer: list[dict[str, Any]]) -> set[str]:
    return {study[STUDY_INSTANCE_UID]["Value"][0] for study in answer}


def pacs_status(http: requests.Session, stack: Stack, token: str, origin: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    if origin:
        headers["Origin"] = origin
    return http.get(f"{stack.base_url}/zhiva/pacs/studies", headers=headers, timeout=10).status_code


def refused_within(
    stack: Stack, tokens: list[str], *, origin: str | None = None, since: float | None = None
) -> float:
    """Poll the PACS until every token gets 403; seconds taken (at most REVOCATION_SECONDS,
    counted from `since`, a time.monotonic() reading, or from now)."""
    http = stack.http()
    start = time.monotonic() if since is None else since
    pending = list(tokens)
    seen: list[int] = []
    while pending and time.monotonic() - start < REVOCATION_SECONDS:
        seen = [pacs_status(http, stack, token, origin) for token in pending]
        pending = [token for token, status in zip(pending, seen, strict=True) if status != 403]
        if pending:
            time.sleep(0.1)
    elapsed = time.monotonic() - start
    assert not pending, f"still answered {seen} after {elapsed:.1f}s"
    print(f"refused at the PACS {elapsed:.2f}s after the revocation")
    return elapsed


def verified_id_token(stack: Stack, id_token: str, client_id: str) -> dict[str, Any]:
    """The ID token's claims, checked against the provider's published keys."""
    http = stack.http()
    config = http.get(f"{stack.base_url}/auth/.well-known/openid-configuration").json()
    keys = KeySet.import_key_set(http.get(config["jwks_uri"]).json())
    token = jwt.decode(id_token, keys, algorithms=["RS256"])
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": stack.settings.oidc_issuer},
        aud={"essential": True, "value": client_id},
        exp={"essential": True},
        sub={"essential": True},
    ).validate(token.claims)
    return token.claims


class AuthlibClient:
    """A public client of the stack in authlib's requests client: PKCE S256, no secret."""

    def __init__(self, stack: Stack, client_id: str) -> None:
        self.stack = stack
        self.client_id = client_id
        self.redirect_uri = f"https://localhost:8443/{client_id}/callback"
        self.post_logout_redirect_uri = f"https://localhost:8443/{client_id}/signed-out"
        register_client(stack, client_id, self.redirect_uri, self.post_logout_redirect_uri)
        self.config = stack.http().get(f"{stack.base_url}/auth/.well-known/openid-configuration")
        self.config.raise_for_status()
        self.session = OAuth2Session(
            client_id,
            redirect_uri=self.redirect_uri,
            scope=SCOPE,
            code_challenge_method="S256",
        )
        # REQUESTS_CA_BUNDLE from the environment would replace `verify` (NOTES.md).
        self.session.trust_env = False
        self.session.verify = stack.ca_file

    def endpoint(self, name: str) -> str:
        url = self.config.json()[name]
        assert isinstance(url, str) and url.startswith(self.stack.base_url + "/auth/"), url
        return url

    def sign_in(self, username: str, password: str) -> dict[str, Any]:
        """Authorize page → form posted as a browser posts it → code → tokens."""
        verifier = secrets.token_urlsafe(48)
        nonce = secrets.token_urlsafe(12)
        url, state = self.session.create_authorization_url(
            self.endpoint("authorization_endpoint"), code_verifier=verifier, nonce=nonce
        )
        query = dict(parse_qsl(urlsplit(url).query))
        assert query["code_challenge"] == create_s256_code_challenge(verifier)
        assert query["code_challenge_method"] == "S256"
        page = self.session.get(url, timeout=10, withhold_token=True)
        assert page.status_code == 200, page.text
        assert "text/html" in page.headers["Content-Type"]
        csrf = CSRF.search(page.text)
        assert csrf, page.text
        posted = self.session.post(
            url,
            data={"username": username, "password": password, "csrf_token": csrf.group(1)},
            headers={"Referer": url, "Origin": self.stack.base_url},
            allow_redirects=False,
            timeout=10,
            withhold_token=True,
        )
        assert posted.status_code == 302, posted.text
        location = posted.headers["Location"]
        assert location.startswith(self.redirect_uri + "?"), location
        back = dict(parse_qsl(urlsplit(location).query))
        assert back["state"] == state and back["code"]
        token = self.session.fetch_token(
            self.endpoint("token_endpoint"),
            authorization_response=location,
            code_verifier=verifier,
            timeout=10,
        )
        assert token["token_type"].lower() == "bearer"
        assert {"access_token", "refresh_token", "id_token"} <= set(token)
        claims = verified_id_token(self.stack, token["id_token"], self.client_id)
        assert claims["nonce"] == nonce
        assert claims["preferred_username"] == username
        return dict(token)

    def close(self) -> None:
        self.session.close()


@pytest.fixture(scope="module")
def study(stack: Stack) -> tuple[str, str]:
    """One small CT study in the PACS: its StudyInstanceUID and Orthanc's id of it."""
    dataset = wheel_dataset("CT_small.dcm")
    uploader = bearer_session(stack, access_token(stack, can_edit=True))
    answer = uploader.post(
        f"{stack.base_url}/zhiva/instances",
        data=encode(dataset),
        headers={"Content-Type": "application/dicom"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return str(dataset.StudyInstanceUID), answer.json()["ParentStudy"]


@pytest.fixture
def viewer_user(stack: Stack) -> str:
    """A user who may read, not change (no canEditResource)."""
    username = unique("oidc-viewer")
    stack.create_user(username, PASSWORD, name="OIDC Viewer")
    return username


@pytest.fixture
def authlib_client(stack: Stack) -> Iterator[AuthlibClient]:
    client = AuthlibClient(stack, unique("authlib"))
    yield client
    client.close()


# --- 1. authlib's requests client --------------------------------------------------------------


@pytest.mark.e2e
def test_authlib_code_flow_reads_refreshes_revokes_and_logs_out(
    stack, study, viewer_user, authlib_client
):
    client = authlib_client
    study_uid, orthanc_id = study
    first = client.sign_in(viewer_user, PASSWORD)
    studies_url = f"{stack.base_url}/zhiva/pacs/studies"

    # The access token reads through nginx (the session sends it as Authorization: Bearer).
    qido = client.session.get(studies_url, timeout=10)
    assert qido.status_code == 200, qido.text
    assert study_uid in study_uids(qido.json())

    # A viewer's token may not delete, and nothing was deleted.
    delete = client.session.delete(f"{stack.base_url}/zhiva/studies/{orthanc_id}", timeout=10)
    assert delete.status_code == 403, delete.text
    assert study_uid in study_uids(client.session.get(studies_url, timeout=10).json())

    # Refresh: a new access token (and a rotated refresh token) that reads too.
    second = dict(client.session.refresh_token(client.endpoint("token_endpoint"), timeout=10))
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    http = stack.http()
    assert pacs_status(http, stack, second["access_token"], None) == 200
    # The spent refresh token is no longer good (rotation).
    stale = http.post(
        client.endpoint("token_endpoint"),
        data={
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": client.client_id,
        },
    )
    assert stale.status_code == 400 and stale.json()["error"] == "invalid_grant", stale.text

    # Revoking the refresh token (RFC 7009) ends its family: every access token of it.
    revoked = client.session.revoke_token(
        client.endpoint("revocation_endpoint"),
        token=second["refresh_token"],
        token_type_hint="refresh_token",
        timeout=10,
    )
    assert revoked.status_code == 200, revoked.text
    refused_within(stack, [first["access_token"], second["access_token"]])

    # RP-initiated logout with the ID token and a registered return address.
    logout = client.session.get(
        client.endpoint("end_session_endpoint"),
        params={
            "id_token_hint": first["id_token"],
            "post_logout_redirect_uri": client.post_logout_redirect_uri,
            "state": "bye",
        },
        allow_redirects=False,
        timeout=10,
        withhold_token=True,
    )
    assert logout.status_code == 302, logout.text
    assert logout.headers["Location"] == client.post_logout_redirect_uri + "?state=bye"


@pytest.mark.e2e
def test_a_removed_clients_tokens_are_refused_by_the_pacs(stack, study, viewer_user):
    client = AuthlibClient(stack, unique("removed"))
    try:
        tokens = client.sign_in(viewer_user, PASSWORD)
        http = stack.http()
        assert pacs_status(http, stack, tokens["access_token"], None) == 200

        stack.make("admin", ARGS=f"clients remove {client.client_id}")
        removed = time.monotonic()
        refused_within(stack, [tokens["access_token"]], since=removed)
        # Nor can it get new ones.
        refresh = http.post(
            client.endpoint("token_endpoint"),
            data={
                "grant_type": "refresh_token",
                "refresh_token": tokens["refresh_token"],
                "client_id": client.client_id,
            },
        )
        assert refresh.status_code in (400, 401), refresh.text
        assert refresh.json()["error"] in ("invalid_client", "invalid_grant")
    finally:
        client.close()


# --- browsers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as chromium:
        yield chromium


@pytest.fixture
def page(browser):
    # The stack's certificate is self-made: Chromium is told to accept it (as in
    # tests/test_login_browser.py), not taught it.
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 900, "height": 760})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def shot(page: Any, stack: Stack, name: str) -> None:
    page.screenshot(path=str(stack.output_dir / f"{name}.png"), full_page=True)


# --- 2. the device flow, as a notebook does it ---------------------------------------------------


@pytest.mark.browser
@pytest.mark.e2e
def test_device_flow_from_a_script_then_dicomweb_client(
    stack, study, viewer_user, page, monkeypatch
):
    study_uid, _ = study
    client_id = unique("notebook")
    register_client(
        stack,
        client_id,
        f"https://localhost:8443/{client_id}",
        f"https://localhost:8443/{client_id}",
    )
    # The notebook trusts the stack's certificate the way requests is told to.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", stack.ca_file)
    issuer = stack.settings.oidc_issuer
    shown: queue.Queue[tuple[str, str]] = queue.Queue()
    outcome: dict[str, Any] = {}

    def script() -> None:
        try:
            outcome["tokens"] = device_sign_in(issuer, client_id, lambda u, c: shown.put((u, c)))
        except Exception as error:  # noqa: BLE001 - reported by the test below
            outcome["error"] = error
            shown.put(("", ""))

    polling = threading.Thread(target=script, daemon=True)
    started = time.monotonic()
    polling.start()
    url, user_code = shown.get(timeout=30)
    assert url, outcome.get("error")
    assert url.startswith(issuer + "/oauth/device/verify?")
    assert dict(parse_qsl(urlsplit(url).query))["user_code"] == user_code

    # The person: opens the link, signs in, sees the code filled in, continues, approves.
    page.goto(url)
    provider_sign_in(page, viewer_user, PASSWORD)
    page.wait_for_selector("#user_code")
    assert page.locator("h1").inner_text() == "Connect a device"
    assert page.locator("#user_code").input_value() == user_code
    page.click("button[value=lookup]")
    page.wait_for_selector("button[value=approve]")
    assert page.locator("h1").inner_text() == "Connect this device?"
    assert client_id in page.locator("dl.details").inner_text()
    shot(page, stack, "oidc-device-approve")
    page.click("button[value=approve]")
    page.wait_for_selector("text=Device connected")

    polling.join(timeout=60)
    assert not polling.is_alive(), "the script is still polling"
    assert "error" not in outcome, outcome.get("error")
    tokens = outcome["tokens"]
    assert {"access_token", "refresh_token"} <= set(tokens)
    print(f"device flow: tokens {time.monotonic() - started:.1f}s after the script started")

    # The script reads the PACS with dicomweb-client.
    found = search_studies(f"{stack.base_url}/zhiva/pacs", tokens["access_token"])
    assert study_uid in study_uids(found)
    info = stack.http().get(
        f"{issuer}/oauth/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert info.status_code == 200 and info.json()["preferred_username"] == viewer_user


# --- 3. oidc-client-ts in Chromium, on another origin --------------------------------------------


@pytest.fixture(scope="module")
def oidc_bundle(stack):
    return oidc_client_ts_bundle(stack.output_dir / "npm")


@pytest.fixture
def client_page(stack, oidc_bundle) -> Iterator[ClientPage]:
    client_id = unique("spa")
    with ClientPage(
        oidc_bundle,
        issuer=stack.settings.oidc_issuer,
        pacs_url=f"{stack.base_url}/zhiva/pacs",
        client_id=client_id,
        certificate=stack.settings.tls_certificate,
        private_key=stack.settings.tls_private_key,
    ) as served:
        register_client(stack, client_id, served.redirect_uri, served.post_logout_redirect_uri)
        yield served


@pytest.mark.browser
@pytest.mark.e2e
def test_oidc_client_ts_on_another_origin(stack, study, viewer_user, page, client_page):
    study_uid, _ = study
    app = client_page
    assert urlsplit(app.origin).netloc != urlsplit(stack.base_url).netloc

    page.goto(app.origin + "/index.html")
    page.wait_for_selector("text=ready")
    page.click("#sign-in")
    page.wait_for_url(lambda url: url.startswith(stack.base_url + "/auth/oauth/authorize?"))
    request = dict(parse_qsl(urlsplit(page.url).query))
    assert request["code_challenge_method"] == "S256" and request["redirect_uri"] == (
        app.redirect_uri
    )
    shot(page, stack, "oidc-client-ts-sign-in")
    provider_sign_in(page, viewer_user, PASSWORD)
    page.wait_for_url(lambda url: url.startswith(app.redirect_uri + "?"))
    signed_in = page.evaluate("window.pageDone")
    assert signed_in["ok"], signed_in
    user = signed_in["user"]
    assert user["profile"]["preferred_username"] == viewer_user
    assert user["refresh_token"], "offline_access gives a refresh token"
    shot(page, stack, "oidc-client-ts-callback")

    # QIDO from the app's origin: a CORS request with the access token.
    read = page.evaluate("readStudies()")
    assert read["status"] == 200, read
    assert study_uid in study_uids(json.loads(read["body"]))
    # The token is bound to its client's origins: another (allowed) origin is refused.
    http = stack.http()
    assert pacs_status(http, stack, user["access_token"], "https://localhost:1") == 403
    assert pacs_status(http, stack, user["access_token"], app.origin) == 200

    # signinSilent: the refresh token, from the page, gives a new access token that reads.
    renewed = page.evaluate(
        """async () => {
            const user = await userManager.signinSilent();
            return {access_token: user.access_token, refresh_token: user.refresh_token};
        }"""
    )
    assert renewed["access_token"] != user["access_token"]
    assert renewed["refresh_token"] and renewed["refresh_token"] != user["refresh_token"]
    read = page.evaluate("readStudies()")
    assert read["status"] == 200, read
    assert study_uid in study_uids(json.loads(read["body"]))

    # signoutRedirect: the provider's logout, back at the registered address...
    page.evaluate("() => { userManager.signoutRedirect(); }")
    page.wait_for_url(lambda url: url.startswith(app.post_logout_redirect_uri))
    logged_out = time.monotonic()
    signed_out = page.evaluate("window.pageDone")
    assert signed_out == {"ok": True, "user": None}, signed_out
    shot(page, stack, "oidc-client-ts-signed-out")
    # ...and every access token the session got is refused at the PACS within 5 s.
    tokens = [user["access_token"], renewed["access_token"]]
    refused_within(stack, tokens, origin=app.origin, since=logged_out)
    # As the app itself sees it.
    read = page.evaluate("(token) => readStudies(token)", renewed["access_token"])
    assert read["status"] == 403, read


@pytest.mark.e2e
def test_discovery_names_the_public_endpoints(stack):
    """What both libraries start from: the issuer and endpoints on the stack's public URL."""
    config = stack.http().get(f"{stack.base_url}/auth/.well-known/openid-configuration").json()
    issuer = stack.settings.oidc_issuer
    assert issuer == stack.base_url + "/auth" and config["issuer"] == issuer
    for name in (
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
        "revocation_endpoint",
        "end_session_endpoint",
        "device_authorization_endpoint",
        "jwks_uri",
    ):
        assert config[name].startswith(issuer + "/"), name
    assert config["code_challenge_methods_supported"] == ["S256"]
