"""The OHIF viewer at /viewer/: its install (infra/viewer.py) and how nginx serves it.

The install is tested on small tarballs made here (a tampered one is refused, a second
install fetches nothing); the served files on the stack `make up` started, which
installed the pinned release with npm. Sign-in and image drawing need the OpenID
Connect provider and are not tested here: the browser test stops at the redirect to
the provider's authorize page.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from infra import viewer
from infra.viewer import Release, ViewerError, install, viewer_files
from tests.browser.chromium import chromium_browser
from tests.support.viewer_builds import (
    HASHED,
    integrity_of,
    npm_tarball,
    release_of,
    small_build,
)


@pytest.fixture
def no_npm(monkeypatch, tmp_path):
    """Nothing may be fetched: no npm on PATH, and running any program fails the test."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))

    def refuse(*args, **kwargs):
        raise AssertionError(f"a program was run: {args}")

    monkeypatch.setattr(subprocess, "run", refuse)


def test_a_build_is_unpacked_patched_for_viewer_and_marked(tmp_path):
    tarball = small_build(tmp_path / "image")
    files = install(tmp_path / "state", release_of(tarball), tarball_dirs=(tarball.parent,))
    assert files.installed()
    dist = files.dist
    index = (dist / "index.html").read_text()
    assert 'window.PUBLIC_URL="/viewer/"' in index
    assert f'src="/viewer/app.bundle.{HASHED}.js"' in index
    assert 'href="/viewer/app.bundle.css"' in index and 'href="/viewer/manifest.json"' in index
    assert 'content="/viewer/assets/browserconfig.xml"' in index
    assert 'href="//elsewhere.example/x"' in index  # protocol-relative: left alone
    assert '"src": "/viewer/assets/icon.png"' in (dist / "manifest.json").read_text()
    for bundle in (f"app.bundle.{HASHED}.js", f"workers/decode.bundle.{HASHED}.js"):
        assert '__webpack_require__.p = "/viewer/";' in (dist / bundle).read_text()
    # Only dist/, and not the build's own configuration (nginx serves the rendered one).
    assert not (dist / "app-config.js").exists()
    assert not (dist / "package.json").exists() and not (dist / "README.md").exists()
    marker = json.loads(files.marker.read_text())
    assert marker["version"] == "9.9.9" and marker["integrity"] == integrity_of(tarball)
    # STATE_DIR's rule: private to the stack's user.
    for path in [files.root, *files.root.rglob("*")]:
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path


def test_a_tampered_tarball_is_refused_and_nothing_is_installed(tmp_path, capsys):
    tarball = small_build(tmp_path / "image")
    pinned = integrity_of(npm_tarball(tmp_path / "genuine.tgz", {"package/dist/index.html": "x"}))
    with pytest.raises(ViewerError, match="Refusing to install it") as refused:
        install(tmp_path / "state", release_of(tarball, pinned), tarball_dirs=(tarball.parent,))
    assert pinned in str(refused.value) and integrity_of(tarball) in str(refused.value)
    files = viewer_files(tmp_path / "state", release_of(tarball, pinned))
    assert not files.installed() and not files.version_dir.exists()
    assert not list(files.root.glob(".*.partial")), "what was unpacked stays behind"


def test_npm_packs_the_pinned_spec_and_its_tarball_is_checked(tmp_path, monkeypatch):
    """`npm pack` as the installer runs it; a fake npm hands over a tampered tarball."""
    tampered = small_build(tmp_path / "registry")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "npm-calls"
    npm = bin_dir / "npm"
    npm.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {calls}\n'
        'while [ "$1" != --pack-destination ]; do shift; done\n'
        f'cp {tampered} "$2/"\n'
    )
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    release = release_of(tampered, viewer.OHIF_INTEGRITY)
    with pytest.raises(ViewerError, match="not the pinned"):
        install(tmp_path / "state", release, tarball_dirs=())
    assert calls.read_text().split()[:2] == ["pack", "@ohif/app@9.9.9"]
    assert "--ignore-scripts" in calls.read_text()
    assert not viewer_files(tmp_path / "state", release).installed()
    # The genuine one (its integrity pinned) installs through the same path.
    install(tmp_path / "state", release_of(tampered), tarball_dirs=())
    assert viewer_files(tmp_path / "state", release_of(tampered)).installed()


def test_a_second_install_fetches_nothing(tmp_path, no_npm, capsys):
    tarball = small_build(tmp_path / "image")
    release = release_of(tarball)
    first = install(tmp_path / "state", release, tarball_dirs=(tarball.parent,))
    marked = first.marker.stat().st_mtime_ns
    tarball.unlink()  # and nothing to unpack from: offline, image or not
    again = install(tmp_path / "state", release, tarball_dirs=(tarball.parent,))
    assert again.installed() and again.marker.stat().st_mtime_ns == marked
    assert "is installed" in capsys.readouterr().out


def test_an_install_cut_short_is_done_again(tmp_path):
    tarball = small_build(tmp_path / "image")
    release = release_of(tarball)
    files = viewer_files(tmp_path / "state", release)
    # What a crash leaves: files without the marker, and a half-made partial copy.
    (files.dist).mkdir(parents=True)
    (files.dist / "index.html").write_text("half")
    (files.root / ".9.9.9.partial" / "dist").mkdir(parents=True)
    assert not files.installed()
    install(tmp_path / "state", release, tarball_dirs=(tarball.parent,))
    assert files.installed()
    assert "/viewer/" in (files.dist / "index.html").read_text()
    assert not (files.root / ".9.9.9.partial").exists()


def test_an_upgrade_removes_the_release_before_it(tmp_path):
    tarball = small_build(tmp_path / "image")
    old = viewer_files(tmp_path / "state", Release("@ohif/app", "9.9.8", "sha512-old"))
    old.dist.mkdir(parents=True)
    install(tmp_path / "state", release_of(tarball), tarball_dirs=(tarball.parent,))
    assert not old.version_dir.exists()


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ({"package/dist/../../escape.js": "x"}, "outside"),
        ({"package/dist/link.js": None}, "link"),
    ],
)
def test_a_tarball_with_paths_out_of_dist_or_links_is_refused(tmp_path, members, reason):
    tarball = small_build(tmp_path / "image", **members)
    with pytest.raises(ViewerError, match=reason):
        install(tmp_path / "state", release_of(tarball), tarball_dirs=(tarball.parent,))
    assert not (tmp_path / "escape.js").exists()


def test_a_build_that_cannot_be_patched_is_refused(tmp_path):
    (tmp_path / "image").mkdir()
    tarball = npm_tarball(
        tmp_path / "image" / "ohif-app-9.9.9.tgz",
        {"package/dist/index.html": "<html><script src='app.js'></script></html>"},
    )
    with pytest.raises(ViewerError, match="cannot be patched"):
        install(tmp_path / "state", release_of(tarball), tarball_dirs=(tarball.parent,))


# --- the files nginx serves, on the stack `make up` started ---------------------------------


def _get(stack, path: str, **headers: str):
    return stack.http().get(f"{stack.base_url}{path}", headers=headers, timeout=30)


def _app_bundle(index: str) -> str:
    found = re.search(r'src="/viewer/(app\.bundle\.[0-9a-f]{16}\.js)"', index)
    assert found, "index.html names no hashed app bundle under /viewer/"
    return found.group(1)


@pytest.mark.stack
@pytest.mark.e2e
@pytest.mark.parametrize("path", ["/viewer/", "/viewer/viewer?StudyInstanceUIDs=1.2.3"])
def test_the_viewer_page_is_served_patched_for_viewer_without_a_token(stack, path):
    response = _get(stack, path)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["Cache-Control"] == "no-cache"
    page = response.text
    assert 'window.PUBLIC_URL="/viewer/"' in page and 'window.PUBLIC_URL="/"' not in page
    assert '<script rel="preload" as="script" src="/viewer/app-config.js">' in page
    assert not re.search(r'\s(?:href|src)="/(?!viewer/|/)', page), "a path outside /viewer/"
    _app_bundle(page)


@pytest.mark.stack
@pytest.mark.e2e
def test_viewer_without_its_slash_is_sent_to_it(stack):
    response = stack.http().get(f"{stack.base_url}/viewer", allow_redirects=False, timeout=30)
    assert response.status_code == 301
    assert urlsplit(response.headers["Location"]).path == "/viewer/"


@pytest.mark.stack
@pytest.mark.e2e
def test_hashed_bundles_are_immutable_and_gzipped(stack):
    bundle = _app_bundle(_get(stack, "/viewer/").text)
    response = _get(stack, f"/viewer/{bundle}", **{"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/javascript"
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert response.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in response.headers["Vary"]
    assert '__webpack_require__.p = "/viewer/";' in response.text
    plain = _get(stack, f"/viewer/{bundle}", **{"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers and plain.content == response.content


@pytest.mark.stack
@pytest.mark.e2e
def test_a_missing_file_is_404_not_the_page(stack):
    assert _get(stack, f"/viewer/999.bundle.{HASHED}.js").status_code == 404
    assert _get(stack, "/viewer/assets/nothing.png").status_code == 404


@pytest.mark.stack
@pytest.mark.e2e
def test_the_viewer_runs_under_its_content_security_policy(stack):
    policy = _get(stack, "/viewer/").headers["Content-Security-Policy"]
    directives = {
        part.split()[0]: set(part.split()[1:]) for part in policy.split(";") if part.strip()
    }
    assert {"'self'", "'unsafe-eval'", "'wasm-unsafe-eval'"} <= directives["script-src"]
    assert directives["worker-src"] == {"'self'", "blob:"}
    assert "'self'" in directives["connect-src"]
    assert directives["frame-ancestors"] == {"'none'"}
    assert directives["base-uri"] == {"'self'"}
    assert "*" not in policy
    bundle = _app_bundle(_get(stack, "/viewer/").text)
    for path in (f"/viewer/{bundle}", "/viewer/app-config.js", "/viewer/viewer"):
        assert _get(stack, path).headers["Content-Security-Policy"] == policy


def _evaluated_config(text: str) -> dict:
    """app-config.js run as the browser runs it (a `window`), its `window.config` as JSON."""
    node = shutil.which("node")
    assert node, "node is missing (npm, which installs the viewer, needs it too)"
    script = (
        "const vm = require('vm'); let code = '';"
        "process.stdin.on('data', d => code += d).on('end', () => {"
        "  const sandbox = {window: {}}; vm.runInNewContext(code, sandbox);"
        "  process.stdout.write(JSON.stringify(sandbox.window.config)); });"
    )
    result = subprocess.run(
        [node, "-e", script], input=text, capture_output=True, text=True, timeout=30, check=True
    )
    return json.loads(result.stdout)


@pytest.mark.stack
@pytest.mark.e2e
def test_app_config_names_the_stacks_dicomweb_root_and_provider(stack):
    response = _get(stack, "/viewer/app-config.js")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-cache"
    config = _evaluated_config(response.text)
    base = stack.settings.public_base_url
    assert config["routerBasename"] == "/viewer"
    assert config["investigationalUseDialog"] == {"option": "never"}
    assert config["customizationService"] == [{"ohif.tours": {"$set": []}}]
    [source] = config["dataSources"]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    assert config["defaultDataSourceName"] == source["sourceName"]
    dicomweb = source["configuration"]
    for root in ("qidoRoot", "wadoRoot", "wadoUriRoot"):
        assert dicomweb[root] == f"{base}/zhiva/pacs"
    assert dicomweb["imageRendering"] == dicomweb["thumbnailRendering"] == "wadors"
    assert dicomweb["qidoSupportsIncludeField"] is False
    assert dicomweb["enableStudyLazyLoad"] is True
    assert dicomweb["supportsFuzzyMatching"] is False
    assert dicomweb["omitQuotationForMultipartRequest"] is True
    assert dicomweb["bulkDataURI"] == {"enabled": True}
    [oidc] = config["oidc"]
    assert oidc == {
        "authority": stack.settings.oidc_issuer,
        "client_id": "zhiva-viewer",
        "redirect_uri": f"{base}/viewer/callback",
        "post_logout_redirect_uri": f"{base}/viewer/",
        "response_type": "code",
        "scope": "openid profile offline_access",
        "automaticSilentRenew": True,
        "revokeAccessTokenOnSignout": True,
    }


@pytest.mark.stack
def test_the_installed_release_is_marked_and_a_restart_fetches_nothing(stack, no_npm):
    state_dir = Path(stack.env["STATE_DIR"])
    files = viewer_files(state_dir)
    assert files.installed(), f"no whole install marked at {files.marker}"
    assert json.loads(files.marker.read_text())["integrity"] == viewer.OHIF_INTEGRITY
    marked = files.marker.stat().st_mtime_ns
    assert install(state_dir).installed()  # PATH holds no npm and nothing may run
    assert files.marker.stat().st_mtime_ns == marked
    # STATE_DIR's rule holds for the viewer too: the stack's user's alone.
    owner = state_dir.stat().st_uid
    for path in [files.root, *files.root.rglob("*")]:
        assert path.stat().st_uid == owner, path
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path


# --- the page in Chromium ---------------------------------------------------------------


@pytest.mark.stack
@pytest.mark.browser
def test_chromium_loads_the_viewer_and_is_sent_to_the_providers_authorize_page(stack):
    base = stack.base_url
    issuer = stack.settings.oidc_issuer
    failed: list[str] = []
    violations: list[str] = []
    with chromium_browser() as browser:
        context = browser.new_context(ignore_https_errors=True)
        context.expose_binding(
            "reportViolation", lambda _source, text: violations.append(str(text))
        )
        context.add_init_script(
            "document.addEventListener('securitypolicyviolation', e => window.reportViolation("
            "`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));"
        )

        page = context.new_page()
        page.on(
            "response",
            lambda r: (
                failed.append(f"{r.status} {r.url}")
                if r.url.startswith(f"{base}/viewer/") and r.status >= 400
                else None
            ),
        )
        page.on(
            "console",
            lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
        )
        authorize = f"{issuer}/oauth/authorize"
        with page.expect_request(lambda r: r.url.startswith(authorize), timeout=60_000) as sent:
            page.goto(f"{base}/viewer/", wait_until="commit")
        request = sent.value
        answer = request.response()
        page.wait_for_load_state()
        page.screenshot(path=str(stack.output_dir / "viewer-sign-in-redirect.png"))
        context.close()
    assert not failed, f"the viewer's own files failed: {failed}"
    assert not violations, f"Content-Security-Policy violations: {violations}"
    assert request.is_navigation_request()
    query = {name: values[0] for name, values in parse_qs(urlsplit(request.url).query).items()}
    assert query["client_id"] == "zhiva-viewer"
    assert query["response_type"] == "code"
    assert query["redirect_uri"] == f"{stack.settings.public_base_url}/viewer/callback"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert set(query["scope"].split()) == {"openid", "profile", "offline_access"}
    assert query["state"]
    # The provider's own sign-in page answers the redirect.
    assert answer is not None and answer.status == 200
