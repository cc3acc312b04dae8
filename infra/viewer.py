"""The local viewer at `/viewer/`: a pinned release of OHIF's published build (`@ohif/app`).

`make up` (infra/stack.py `prepare`) calls `prepare`: the release is installed once
into `STATE_DIR/viewer/<version>/dist/` and its `app-config.js` rendered again from the
settings every time, beside it in `STATE_DIR/viewer/`. nginx serves both
(infra/templates/nginx.conf.j2, `location ^~ /viewer/`).

Installing: `npm pack` fetches the release's tarball (or the container image carries it,
fetched the same way when the image was built: `python -m infra.viewer fetch DIR`), its
SHA-512 must equal the pinned registry integrity (else it is refused), `package/dist/`
alone is unpacked, and the build, made to be served at `/`, is patched to live under
`/viewer/`. A marker written last says the copy is whole: a later `make up`, online or
not, fetches nothing, and an install cut short is done again.

Upgrading: change OHIF_VERSION and OHIF_INTEGRITY (`npm view @ohif/app@VERSION
dist.integrity`), then check that `patch_dist` still finds what it patches (it refuses a
build where it does not).

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
PATCH_REVISION = 1

BASE_PATH = "/viewer/"
ROUTER_BASENAME = BASE_PATH.rstrip("/")
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
    """Where the viewer lives under STATE_DIR."""

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
        """The rendered configuration, served at /viewer/app-config.js."""
        return self.root / "app-config.js"

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
    bundle loads its chunks, decoders and WebAssembly from. The build's own
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
    (dist / "app-config.js").unlink(missing_ok=True)
    return changed + len(patched)


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
) -> ViewerFiles:
    """The release unpacked and patched under STATE_DIR/viewer, once; nothing when it is there.

    A tarball of the release in one of `tarball_dirs` (the container image's) is used when
    it passes the integrity check; otherwise `npm pack` fetches it.
    """
    files = viewer_files(state_dir, release)
    if files.installed():
        say(f"OHIF {release.version} is installed ({files.dist})")
        return files
    with _locked(files.root):
        if files.installed():  # another installer finished meanwhile
            return files
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
        _remove_other_releases(files)
        say(
            f"OHIF {release.version} installed in {files.dist} ({changed} files patched for "
            f"{BASE_PATH}, {_size(files.dist) / 1e6:.0f} MB, {time.monotonic() - started:.1f}s)"
        )
    return files


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
    """Releases installed before an upgrade, and installs cut short, go."""
    for entry in files.root.iterdir():
        if entry == files.version_dir or not entry.is_dir() or entry.is_symlink():
            continue
        if re.fullmatch(r"\.?\d+\.\d+\.\d+[-.\w]*", entry.name):
            shutil.rmtree(entry, ignore_errors=True)
            say(f"removed {entry}")


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
        },
    }


def render_app_config(settings: Settings) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    environment = Environment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - JavaScript; every value goes through `tojson`
    )
    template = environment.get_template("viewer-app-config.js.j2")
    return template.render(**app_config_context(settings))


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


def prepare(settings: Settings) -> ViewerFiles:
    """What `make up` does for the viewer: install it when needed, render its config."""
    files = install(settings.state_dir)
    write_app_config(settings)
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
