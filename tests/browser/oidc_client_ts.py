"""oidc-client-ts, the OpenID Connect library OHIF signs in with, on a test page of its own origin.

The library comes from the npm registry as the viewer does (infra/viewer.py
`fetch_tarball`: `npm pack`, refused unless its SHA-512 is the pinned
integrity), and only `package/dist/browser/oidc-client-ts.min.js` is kept, in
a cache under the test output, so a later run fetches nothing. Upgrading:
change OIDC_CLIENT_TS_VERSION and OIDC_CLIENT_TS_INTEGRITY together (`npm view
oidc-client-ts@VERSION dist.integrity`).

`ClientPage` serves it on `https://localhost:PORT` (an always-allowed origin)
with the stack's certificate: `index.html` (a "Sign in" button calling
`signinRedirect`), `callback.html` (`signinRedirectCallback`) and
`signed-out.html` (`signoutRedirectCallback`). Each page builds the same
`UserManager` (`window.userManager`) and offers `readStudies()`, a QIDO
request with the signed-in user's access token from this origin (CORS).
"""

from __future__ import annotations

import json
import shutil
import ssl
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from infra.viewer import Release, fetch_tarball

from .viewer import free_port

OIDC_CLIENT_TS_VERSION = "3.5.0"
# The registry's `dist.integrity` of that version.
OIDC_CLIENT_TS_INTEGRITY = "sha512-l2q8l9CTCTOlbX+AnK4p3M+4CEpKpyQhle6blQkdFhm0IsBqsxm15bYaSa11G7pWdsYr6epdsRZxJpCyCRbT8A=="  # noqa: E501
OIDC_CLIENT_TS = Release("oidc-client-ts", OIDC_CLIENT_TS_VERSION, OIDC_CLIENT_TS_INTEGRITY)
BUNDLE_MEMBER = "package/dist/browser/oidc-client-ts.min.js"
BUNDLE_NAME = "oidc-client-ts.min.js"
SCOPE = "openid profile offline_access"


def oidc_client_ts_bundle(cache_dir: Path, release: Release = OIDC_CLIENT_TS) -> Path:
    """The browser bundle of `release`, fetched once into `cache_dir/<name>-<version>/`."""
    target_dir = cache_dir / f"{release.package}-{release.version}"
    bundle = target_dir / BUNDLE_NAME
    if bundle.is_file():
        return bundle
    scratch = cache_dir / f".{release.package}-{release.version}.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        tarball = fetch_tarball(release, scratch)  # checks the pinned integrity
        with tarfile.open(tarball, "r:gz") as archive:
            member = archive.getmember(BUNDLE_MEMBER)
            source = archive.extractfile(member)
            assert source is not None, f"{BUNDLE_MEMBER} is not a file in {tarball}"
            with source:
                (scratch / BUNDLE_NAME).write_bytes(source.read())
        tarball.unlink()
        shutil.rmtree(target_dir, ignore_errors=True)
        scratch.replace(target_dir)  # whole or not at all: the next run trusts what is there
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return bundle


APP_JS = """
window.userManager = new oidc.UserManager(window.OIDC_SETTINGS);
window.readStudies = async function (token) {
  if (!token) {
    const user = await window.userManager.getUser();
    token = user && user.access_token;
  }
  const answer = await fetch(window.PACS_URL + "/studies", {
    headers: {Authorization: "Bearer " + token, Accept: "application/dicom+json"},
  });
  const text = await answer.text();
  return {status: answer.status, body: text};
};
window.pageDone = new Promise((resolve) => { window.finishPage = resolve; });
"""

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>{title}</title>
<script src="/{bundle}"></script>
<script src="/settings.js"></script>
<script src="/app.js"></script>
<h1>{title}</h1>
<p id="status">loading</p>
{body}
"""

INDEX_BODY = """<button id="sign-in" type="button">Sign in with zhiva PACS</button>
<script>
document.getElementById("status").textContent = "ready";
document.getElementById("sign-in").addEventListener("click", () => {
  window.userManager.signinRedirect().catch((error) => {
    document.getElementById("status").textContent = "error: " + error;
  });
});
</script>"""

CALLBACK_BODY = """<script>
window.userManager.signinRedirectCallback().then(
  (user) => {
    const name = user.profile.preferred_username;
    document.getElementById("status").textContent = "signed in as " + name;
    window.finishPage({ok: true, user: {
      access_token: user.access_token,
      refresh_token: user.refresh_token || null,
      id_token: user.id_token,
      profile: user.profile,
    }});
  },
  (error) => {
    document.getElementById("status").textContent = "error: " + error;
    window.finishPage({ok: false, error: String(error)});
  },
);
</script>"""

SIGNED_OUT_BODY = """<script>
window.userManager.signoutRedirectCallback().then(
  async () => {
    const user = await window.userManager.getUser();
    document.getElementById("status").textContent = "signed out";
    window.finishPage({ok: true, user: user ? user.profile : null});
  },
  (error) => {
    document.getElementById("status").textContent = "error: " + error;
    window.finishPage({ok: false, error: String(error)});
  },
);
</script>"""


class ClientPage:
    """A web app on its own origin that signs in with oidc-client-ts (see the module doc)."""

    def __init__(
        self,
        bundle: Path,
        *,
        issuer: str,
        pacs_url: str,
        client_id: str,
        certificate: Path,
        private_key: Path,
    ) -> None:
        self.port = free_port()
        self.origin = f"https://localhost:{self.port}"
        self.redirect_uri = f"{self.origin}/callback.html"
        self.post_logout_redirect_uri = f"{self.origin}/signed-out.html"
        settings = {
            "authority": issuer,
            "client_id": client_id,
            "redirect_uri": self.redirect_uri,
            "post_logout_redirect_uri": self.post_logout_redirect_uri,
            "response_type": "code",
            "scope": SCOPE,
        }
        settings_js = (
            f"window.OIDC_SETTINGS = {json.dumps(settings)};\n"
            f"window.PACS_URL = {json.dumps(pacs_url)};\n"
        )
        pages = {
            "/index.html": PAGE.format(title="Client app", bundle=BUNDLE_NAME, body=INDEX_BODY),
            "/callback.html": PAGE.format(title="Callback", bundle=BUNDLE_NAME, body=CALLBACK_BODY),
            "/signed-out.html": PAGE.format(
                title="Signed out", bundle=BUNDLE_NAME, body=SIGNED_OUT_BODY
            ),
        }
        self._files: dict[str, tuple[str, bytes]] = {
            path: ("text/html; charset=utf-8", text.encode()) for path, text in pages.items()
        }
        self._files["/app.js"] = ("text/javascript", APP_JS.encode())
        self._files["/settings.js"] = ("text/javascript", settings_js.encode())
        self._files[f"/{BUNDLE_NAME}"] = ("text/javascript", bundle.read_bytes())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, private_key)
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        files = self._files

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                found = files.get(self.path.split("?", 1)[0])
                if found is None:
                    self.send_error(404)
                    return
                content_type, data = found
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # the URLs carry codes: keep them out of the test output

        return Handler

    def __enter__(self) -> ClientPage:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
