"""The local viewer at `/viewer/`: a pinned release of OHIF's published build (`@ohif/app`).

`make up` (infra/stack.py `prepare`) calls `prepare`: the release is installed once
into `VIEWER_DIR/<version>/dist/` and its `app-config.js` rendered again from the
settings every time into `STATE_DIR/viewer/`. nginx serves both
(infra/templates/nginx.conf.j2, `location ^~ /viewer/`) from `STATE_DIR/viewer/`:
`STATE_DIR/viewer/<version>` is the release this stack serves, the install itself
when VIEWER_DIR is the default (`STATE_DIR/viewer`), else a link to the one in
VIEWER_DIR, which several stacks may share (the tests' stacks do: one install per
test session). Installs into one VIEWER_DIR take turns (a lock there); a stack
whose release another one installed meanwhile fetches nothing.

Installing: `npm pack` fetches the release's tarball (or the container image carries it,
fetched the same way when the image was built: `python -m infra.viewer fetch DIR`), its
SHA-512 must equal the pinned registry integrity (else it is refused), `package/dist/`
alone is unpacked, and the build, made to be served at `/`, is patched to live under
`/viewer/`. A marker written last says the copy is whole: a later `make up`, online or
not, fetches nothing, and an install cut short is done again.

Upgrading: change OHIF_VERSION and OHIF_INTEGRITY (`npm view @ohif/app@VERSION
dist.integrity`), then check that `patch_dist` still finds what it patches (it refuses a
build where it does not). A stack's own VIEWER_DIR loses the release before; a shared
one keeps it (another stack may still serve it): remove it by hand.

Importable without the project's packages (the image build runs `fetch` with Debian's
bare Python): Jinja and the settings are imported where the config is rendered.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from infra import console

if TYPE_CHECKING:
    from services.settings import Settings

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
# The registry's `dist.integrity` of that version: the tarball must hash to exactly this.
OHIF_INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="  # noqa: E501
# Raised when what `patch_dist` does changes, so an installed copy is patched anew.
PATCH_REVISION = 3

BASE_PATH = "/viewer/"
ROUTER_BASENAME = BASE_PATH.rstrip("/")
# The viewer of share links (services/login_service/shares.py sends the browser to
# /viewer/share/viewer?StudyInstanceUIDs=…&token=…): the same build, entered through
# share.html, which loads app-config-share.js: no sign-in (OHIF sends the link's `token`
# as a bearer token and takes it out of the address bar), no study list.
SHARE_ROUTER_BASENAME = BASE_PATH + "share"
SHARE_PAGE = "share.html"
SHARE_APP_CONFIG = "app-config-share.js"
CLIENT_ID = "zhiva-viewer"
# What the container image keeps of the release (infra/docker/services.Dockerfile).
IMAGE_TARBALL_DIR = Path("/opt/zhiva-viewer")
TEMPLATES = Path(__file__).resolve().parent / "templates"
NPM_TIMEOUT = 600

say = partial(console.say, prefix="viewer: ")


class ViewerError(RuntimeError):
    """The viewer cannot be installed; the message says why and what to do."""


@dataclass(frozen=True)
class Release:
    package: str
    version: str
    integrity: str

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"

    @property
    def tarball_name(self) -> str:
        """npm's name for the packed file: `@ohif/app` 3.13.2 is `ohif-app-3.13.2.tgz`."""
        return f"{self.package.lstrip('@').replace('/', '-')}-{self.version}.tgz"


PINNED = Release(OHIF_PACKAGE, OHIF_VERSION, OHIF_INTEGRITY)


@dataclass(frozen=True)
class ViewerFiles:
    """A directory of installed releases: VIEWER_DIR, or a stack's STATE_DIR/viewer.

    Seen from a stack's STATE_DIR/viewer, `version_dir` may be a link to VIEWER_DIR's.
    """

    root: Path
    release: Release = PINNED

    @property
    def version_dir(self) -> Path:
        return self.root / self.release.version

    @property
    def dist(self) -> Path:
        """The patched build nginx serves at /viewer/."""
        return self.version_dir / "dist"

    @property
    def marker(self) -> Path:
        return self.version_dir / "installed.json"

    @property
    def app_config(self) -> Path:
        """The rendered configuration, served at /viewer/app-config.js (one per stack: only
        meaningful under a STATE_DIR)."""
        return self.root / "app-config.js"

    @property
    def share_app_config(self) -> Path:
        """The share viewer's configuration, served at /viewer/app-config-share.js."""
        return self.root / SHARE_APP_CONFIG

    @property
    def share_page(self) -> Path:
        """index.html loading the share viewer's configuration, served for /viewer/share/…"""
        return self.root / SHARE_PAGE

    @property
    def expected_marker(self) -> dict[str, object]:
        return {
            "package": self.release.package,
            "version": self.release.version,
            "integrity": self.release.integrity,
            "patch": PATCH_REVISION,
            "base": BASE_PATH,
        }

    def installed(self) -> bool:
        try:
            recorded = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return False
        return recorded == self.expected_marker and (self.dist / "index.html").is_file()


def viewer_files(state_dir: Path, release: Release = PINNED) -> ViewerFiles:
    """The viewer as a stack serves it: STATE_DIR/viewer (app-config.js, the release)."""
    return ViewerFiles(state_dir / "viewer", release)


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)


def integrity_of(path: Path) -> str:
    """The Subresource-Integrity form of a file's SHA-512, as the npm registry gives it."""
    digest = hashlib.sha512()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def verify(tarball: Path, release: Release) -> None:
    found = integrity_of(tarball)
    if found != release.integrity:
        raise ViewerError(
            f"{tarball} is not the pinned {release.spec}: its integrity is {found}, the pinned "
            f"one {release.integrity}. Refusing to install it (a changed or tampered release); "
            "for an upgrade, change OHIF_VERSION and OHIF_INTEGRITY in infra/viewer.py together"
        )


def fetch_tarball(release: Release, destination: Path) -> Path:
    """`npm pack` the release into `destination` and check it; the tarball's path."""
    npm = shutil.which("npm")
    if npm is None:
        raise ViewerError(
            "npm is missing: the viewer is installed with it (infra/install-system-packages.sh "
            "installs Debian's npm when `make up` runs it, or install Node.js's npm yourself)"
        )
    _private_dir(destination)
    with tempfile.TemporaryDirectory(dir=destination, prefix=".npm-") as scratch:
        environment = {
            **os.environ,
            # Its own cache: the service user has no home, and nothing is left behind.
            "npm_config_cache": str(Path(scratch) / "cache"),
            "npm_config_update_notifier": "false",
            "npm_config_fund": "false",
            "npm_config_audit": "false",
        }
        command = [npm, "pack", release.spec, "--ignore-scripts", "--json"]
        command += ["--pack-destination", scratch]
        say(f"fetching {release.spec} with npm")
        try:
            packed = subprocess.run(
                command,
                cwd=scratch,
                env=environment,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise ViewerError(f"npm pack {release.spec} took over {NPM_TIMEOUT}s") from None
        tarballs = sorted(Path(scratch).glob("*.tgz"))
        if packed.returncode != 0 or len(tarballs) != 1:
            tail = "\n    ".join((packed.stderr or packed.stdout).strip().splitlines()[-8:])
            raise ViewerError(f"npm pack {release.spec} failed ({packed.returncode}):\n    {tail}")
        verify(tarballs[0], release)
        target = destination / release.tarball_name
        os.replace(tarballs[0], target)
    return target


def _dist_member(member: tarfile.TarInfo) -> PurePosixPath | None:
    """The path below `package/dist/` of a member to unpack; None for anything else."""
    parts = PurePosixPath(member.name).parts
    if parts[:2] != ("package", "dist") or len(parts) == 2:
        return None
    relative = PurePosixPath(*parts[2:])
    if member.name.startswith("/") or ".." in relative.parts:
        raise ViewerError(f"the release holds a path outside its directory: {member.name!r}")
    if not (member.isfile() or member.isdir()):
        raise ViewerError(f"the release holds a link or a device: {member.name!r}")
    return relative


def unpack_dist(tarball: Path, target: Path) -> int:
    """`package/dist/` of the tarball into `target` (files 0600, directories 0700); bytes."""
    total = 0
    _private_dir(target)
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            relative = _dist_member(member)
            if relative is None:
                continue
            path = target.joinpath(*relative.parts)
            if member.isdir():
                _private_dir(path)
                continue
            _private_dir(path.parent)
            source = archive.extractfile(member)
            assert source is not None  # a regular file
            with source, open(path, "xb") as out:
                os.fchmod(out.fileno(), 0o600)
                shutil.copyfileobj(source, out, 1 << 20)
            total += member.size
    if not (target / "index.html").is_file():
        raise ViewerError(f"{tarball} has no package/dist/index.html: not OHIF's built viewer")
    return total


# `@ohif/app` is built for `/`: these are what must say BASE_PATH instead (bytes: the
# bundles are read as they are, whatever their encoding).
PUBLIC_URL = re.compile(rb'window\.PUBLIC_URL="/"')
ROOT_ATTRIBUTE = re.compile(rb'(\s(?:href|src|content)=")/(?!/)')
MANIFEST_SRC = re.compile(rb'("src"\s*:\s*")/(?!/)')
WEBPACK_PUBLIC_PATH = re.compile(rb'__webpack_require__\.p = "/";')
CSS_ROOT_URL = re.compile(rb"(url\(\s*['\"]?)/(?!/)")
# OHIF's post-logout route (utils/OpenIdConnectRoutes.tsx) is the whole path of
# post_logout_redirect_uri, `/viewer/`, matched below routerBasename (upstream left its
# `.replace(routerBasename,'')` commented out): it catches OHIF's own `/viewer` route, so
# every study opened runs the sign-out callback (harmless: no state, nothing to end),
# which then went to `${pathname}?${search}`, doubling the `?` of the study's query at
# each pass (`/viewer???StudyInstanceUIDs=…`: a black page). It now goes back to the
# same location.
OIDC_ROUTES_MODULE = b"OpenIdConnectRoutes"
SIGNOUT_NAVIGATE = re.compile(rb"navigate\(`\$\{pathname\}\?\$\{search\}`\)")
SIGNOUT_NAVIGATE_FIXED = rb"navigate({ pathname, search }) /* zhiva: search has its ? */"


def _substitute(path: Path, pattern: re.Pattern[bytes], replacement: bytes) -> int:
    content = path.read_bytes()
    patched, count = pattern.subn(replacement, content)
    if count:
        path.write_bytes(patched)
    return count


def patch_dist(dist: Path, base: str = BASE_PATH) -> int:
    """Make a build for `/` work under `base`; the number of files changed.

    index.html: `window.PUBLIC_URL` and its root-relative `href`/`src`/`content`;
    manifest.json's icons; `__webpack_require__.p = "/"`, the path every bundle and worker
    bundle loads its chunks, decoders and WebAssembly from; `url(/…)` in the style sheets
    (fonts); OHIF's sign-out callback (SIGNOUT_NAVIGATE above). The build's own
    `app-config.js` (a public demo server) goes: nginx serves the rendered one.
    """
    prefix = base.encode()
    index = dist / "index.html"
    if not _substitute(index, PUBLIC_URL, b'window.PUBLIC_URL="' + prefix + b'"'):
        raise ViewerError(f"{index} sets no window.PUBLIC_URL: this build cannot be patched")
    if not _substitute(index, ROOT_ATTRIBUTE, rb"\g<1>" + prefix):
        raise ViewerError(f"{index} loads nothing from `/`: this build cannot be patched")
    changed = 1
    manifest = dist / "manifest.json"
    if manifest.is_file():
        changed += bool(_substitute(manifest, MANIFEST_SRC, rb"\g<1>" + prefix))
    public_path = b'__webpack_require__.p = "' + prefix + b'";'
    patched = [
        path
        for path in sorted(dist.rglob("*.js"))
        if _substitute(path, WEBPACK_PUBLIC_PATH, public_path)
    ]
    if not any(path.name.startswith("app.bundle.") for path in patched):
        raise ViewerError(f"no app.bundle.*.js in {dist} loads its chunks from `/`: cannot patch")
    styles = [
        path
        for path in sorted(dist.rglob("*.css"))
        if _substitute(path, CSS_ROOT_URL, rb"\g<1>" + prefix)
    ]
    routes = [path for path in patched if OIDC_ROUTES_MODULE in path.read_bytes()]
    for path in routes:
        if _substitute(path, SIGNOUT_NAVIGATE, SIGNOUT_NAVIGATE_FIXED) != 1:
            raise ViewerError(
                f"{path} holds OHIF's OpenID Connect routes, but not the sign-out callback "
                "patch_dist sets right: check the new release's SignoutCallbackComponent.tsx "
                "and OpenIdConnectRoutes.tsx, then update the patch (infra/viewer.py)"
            )
    (dist / "app-config.js").unlink(missing_ok=True)
    return changed + len(set(patched) | set(routes)) + len(styles)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One installer at a time (Podman may start the containers' set-up twice at once)."""
    _private_dir(root)
    fd = os.open(root / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def install(
    state_dir: Path,
    release: Release = PINNED,
    tarball_dirs: tuple[Path, ...] = (IMAGE_TARBALL_DIR,),
    viewer_dir: Path | None = None,
) -> ViewerFiles:
    """The release unpacked and patched once into `viewer_dir` (VIEWER_DIR, default
    STATE_DIR/viewer), nothing when it is there; the stack's view of it (`viewer_files`).

    A tarball of the release in one of `tarball_dirs` (the container image's) is used when
    it passes the integrity check; otherwise `npm pack` fetches it. With a `viewer_dir` of
    its own, STATE_DIR/viewer/<version> becomes a link to the release there; with
    STATE_DIR/viewer, a copy of its own replaces such a link; without one (None), what
    the stack serves is kept when it is whole.
    """
    own = viewer_files(state_dir, release)
    if viewer_dir is None and own.installed():  # whatever it serves (a link or its own)
        say(f"OHIF {release.version} is installed ({own.dist})")
        return own
    shared = viewer_dir is not None and _absolute(viewer_dir) != _absolute(own.root)
    if not shared:
        if own.version_dir.is_symlink():  # a shared release served before: one of its own now
            own.version_dir.unlink()
        _install_into(own, tarball_dirs, prune=True)
        return own
    assert viewer_dir is not None
    store = ViewerFiles(viewer_dir, release)
    try:
        # Another stack may serve another release from the same directory: none is removed.
        _install_into(store, tarball_dirs, prune=False)
    except PermissionError as problem:
        raise ViewerError(
            f"VIEWER_DIR={viewer_dir}: {problem.strerror} ({problem.filename}). The user the "
            "stack runs as installs the viewer there: give that directory to it, or leave "
            "VIEWER_DIR unset (STATE_DIR/viewer)"
        ) from None
    _link_release(own, store)
    return own


def _absolute(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _install_into(files: ViewerFiles, tarball_dirs: tuple[Path, ...], *, prune: bool) -> None:
    """Install `files.release` into `files.root` unless it is there; one installer at a time."""
    release = files.release
    if files.installed():
        say(f"OHIF {release.version} is installed ({files.dist})")
        return
    with _locked(files.root):
        if files.installed():  # another installer finished meanwhile
            say(f"OHIF {release.version} was installed meanwhile ({files.dist})")
            return
        started = time.monotonic()
        partial_dir = files.root / f".{release.version}.partial"
        shutil.rmtree(partial_dir, ignore_errors=True)
        try:
            changed = _unpack_into(partial_dir, files, tarball_dirs)
        except BaseException:
            shutil.rmtree(partial_dir, ignore_errors=True)
            raise
        shutil.rmtree(files.version_dir, ignore_errors=True)
        os.replace(partial_dir, files.version_dir)
        if prune:
            _remove_other_releases(files)
        say(
            f"OHIF {release.version} installed in {files.dist} ({changed} files patched for "
            f"{BASE_PATH}, {_size(files.dist) / 1e6:.0f} MB, {time.monotonic() - started:.1f}s)"
        )


def _link_release(own: ViewerFiles, store: ViewerFiles) -> None:
    """STATE_DIR/viewer/<version> made a link to the release in VIEWER_DIR, atomically; what
    was served before (another release, a copy of its own) goes."""
    _private_dir(own.root)
    target = _absolute(store.version_dir)
    link = own.version_dir
    if link.is_symlink() and _absolute(link) == target:
        return
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    partial_link = link.with_name(f".{link.name}.link.{os.getpid()}")
    partial_link.unlink(missing_ok=True)
    partial_link.symlink_to(target, target_is_directory=True)
    os.replace(partial_link, link)
    for entry in own.root.iterdir():
        if entry != link and re.fullmatch(r"\.?\d+\.\d+\.\d+[-.\w]*", entry.name):
            if entry.is_symlink() or not entry.is_dir():
                entry.unlink()
            else:
                shutil.rmtree(entry, ignore_errors=True)
    say(f"serving OHIF {store.release.version} from {store.dist}")


def _unpack_into(partial_dir: Path, files: ViewerFiles, tarball_dirs: tuple[Path, ...]) -> int:
    """The checked release, unpacked and patched in `partial_dir`, marked last; files patched."""
    release = files.release
    _private_dir(partial_dir)
    seeded = [d / release.tarball_name for d in tarball_dirs]
    seeded = [path for path in seeded if path.is_file()]
    if seeded:
        tarball = seeded[0]
        say(f"checking {tarball}")
        verify(tarball, release)
    else:
        tarball = fetch_tarball(release, partial_dir / "download")
    say(f"integrity of {release.spec} checked ({release.integrity[:19]}…); unpacking dist/")
    unpack_dist(tarball, partial_dir / "dist")
    changed = patch_dist(partial_dir / "dist")
    shutil.rmtree(partial_dir / "download", ignore_errors=True)
    # The marker last: a copy without it is an install cut short, done again.
    fd = os.open(partial_dir / "installed.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(files.expected_marker, indent=2) + "\n")
    return changed


def _remove_other_releases(files: ViewerFiles) -> None:
    """Releases installed before an upgrade (or links to them), and installs cut short, go."""
    for entry in files.root.iterdir():
        if entry == files.version_dir:
            continue
        if not re.fullmatch(r"\.?\d+\.\d+\.\d+[-.\w]*", entry.name):
            continue
        if entry.is_symlink():
            entry.unlink()
        elif entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            continue
        say(f"removed {entry}")


# oidc-client-ts's default: how long before an access token expires it is renewed.
OIDC_CLIENT_RENEW_NOTICE = 60


def renew_notice(lifetime: int) -> int | None:
    """How long before expiry the viewer renews an access token of `lifetime` seconds:
    None (the library's 60 s) unless that leaves less than half the lifetime, then a
    quarter of it (OIDC_ACCESS_TOKEN_LIFETIME=60: renewed 45 s after it came)."""
    if lifetime >= 2 * OIDC_CLIENT_RENEW_NOTICE:
        return None
    return max(1, lifetime // 4)


def app_config_context(settings: Settings) -> dict[str, object]:
    base = settings.public_base_url
    return {
        "router_basename": ROUTER_BASENAME,
        "dicomweb_root": f"{base}/zhiva/pacs",
        "oidc": {
            "authority": settings.oidc_issuer,
            "client_id": CLIENT_ID,
            "redirect_uri": f"{base}{BASE_PATH}callback",
            "post_logout_redirect_uri": f"{base}{BASE_PATH}",
            "response_type": "code",
            "scope": "openid profile offline_access",
            "renew_notice": renew_notice(settings.oidc_access_token_lifetime),
        },
    }


def share_app_config_context(settings: Settings) -> dict[str, object]:
    """The share viewer's: the same data source, its own routes, no sign-in, no study list."""
    return {
        **app_config_context(settings),
        "router_basename": SHARE_ROUTER_BASENAME,
        "oidc": None,
        "show_study_list": False,
    }


def render_app_config(settings: Settings, *, share: bool = False) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    environment = Environment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - JavaScript; every value goes through `tojson`
    )
    template = environment.get_template("viewer-app-config.js.j2")
    context = share_app_config_context(settings) if share else app_config_context(settings)
    return template.render(**context)


def write_app_config(settings: Settings) -> Path:
    """app-config.js rendered into STATE_DIR/viewer, replaced atomically."""
    target = viewer_files(settings.state_dir).app_config
    _private_dir(target.parent)
    partial_file = target.with_name(f".{target.name}.{os.getpid()}")
    partial_file.unlink(missing_ok=True)
    fd = os.open(partial_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(render_app_config(settings))
    os.replace(partial_file, target)
    return target


APP_CONFIG_SCRIPT = re.compile(
    rb'(<script[^>]*\ssrc=")' + re.escape(BASE_PATH.encode()) + rb'app-config\.js"'
)


def share_page(index_html: bytes) -> bytes:
    """The patched index.html made to load app-config-share.js instead of app-config.js."""
    replacement = rb"\g<1>" + (BASE_PATH + SHARE_APP_CONFIG).encode() + b'"'
    page, count = APP_CONFIG_SCRIPT.subn(replacement, index_html)
    if count != 1:
        raise ViewerError(
            f"index.html loads {BASE_PATH}app-config.js {count} times, not once: the share "
            "viewer's page cannot be made from it (infra/viewer.py, share_page)"
        )
    return page


def _write_private(target: Path, content: bytes) -> None:
    """`content` into `target` (0600), replaced atomically."""
    _private_dir(target.parent)
    partial_file = target.with_name(f".{target.name}.{os.getpid()}")
    partial_file.unlink(missing_ok=True)
    fd = os.open(partial_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    os.replace(partial_file, target)


def write_share_viewer(settings: Settings) -> tuple[Path, Path]:
    """share.html (from the release this stack serves) and app-config-share.js, rendered into
    STATE_DIR/viewer: the share links' viewer, one per stack, as app-config.js is."""
    files = viewer_files(settings.state_dir)
    _write_private(files.share_page, share_page((files.dist / "index.html").read_bytes()))
    _write_private(files.share_app_config, render_app_config(settings, share=True).encode())
    return files.share_page, files.share_app_config


def prepare(settings: Settings) -> ViewerFiles:
    """What `make up` does for the viewer: install it when needed, render its config."""
    files = install(settings.state_dir, viewer_dir=settings.viewer_dir)
    write_app_config(settings)
    write_share_viewer(settings)
    return files


def main(argv: list[str]) -> int:
    """`fetch DIR`: the pinned tarball into DIR, checked (the container image's build)."""
    if len(argv) != 2 or argv[0] != "fetch":
        print("usage: python -m infra.viewer fetch DIR", file=sys.stderr)
        return 2
    try:
        directory = Path(argv[1])
        tarball = directory / PINNED.tarball_name
        if tarball.is_file():
            verify(tarball, PINNED)
        else:
            tarball = fetch_tarball(PINNED, directory)
    except ViewerError as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    say(f"{tarball} is {PINNED.spec}, integrity checked")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
