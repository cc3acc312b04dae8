"""Small OHIF builds for the viewer install tests: npm-shaped tarballs and their releases.

Each is a stand-in for `@ohif/app` 9.9.9 (infra/viewer.py installs it as it installs the
pinned release): an index page, a manifest and webpack bundles that need patching for
/viewer/, and what the install must leave out.
"""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
from pathlib import Path

from infra.viewer import Release

HASHED = "0123456789abcdef"
SMALL_INDEX = (
    '<!doctype html><html><head><link rel="manifest" href="/manifest.json">'
    '<meta name="msapplication-config" content="/assets/browserconfig.xml">'
    '<script>window.PUBLIC_URL="/"</script><script src="/app-config.js"></script>'
    f'<script defer src="/app.bundle.{HASHED}.js"></script>'
    '<link href="/app.bundle.css" rel="stylesheet"><a href="//elsewhere.example/x">x</a>'
    "</head><body></body></html>"
)
SMALL_BUNDLE = '(() => { __webpack_require__.p = "/"; })();\n'


def npm_tarball(path: Path, members: dict[str, str | None]) -> Path:
    """A gzipped tarball shaped like npm's: `name: text`, or None for a symbolic link."""
    with tarfile.open(path, "w:gz") as archive:
        for name, text in members.items():
            info = tarfile.TarInfo(name)
            if text is None:
                info.type = tarfile.SYMTYPE
                info.linkname = "/etc/passwd"
                archive.addfile(info)
                continue
            data = text.encode()
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return path


def small_build(directory: Path, **extra: str | None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return npm_tarball(
        directory / "ohif-app-9.9.9.tgz",
        {
            "package/package.json": '{"name": "@ohif/app", "version": "9.9.9"}',
            "package/README.md": "not unpacked",
            "package/dist/index.html": SMALL_INDEX,
            "package/dist/manifest.json": '{"icons": [{"src": "/assets/icon.png"}]}',
            "package/dist/app-config.js": "window.config = {demo: true};",
            f"package/dist/app.bundle.{HASHED}.js": SMALL_BUNDLE,
            f"package/dist/workers/decode.bundle.{HASHED}.js": SMALL_BUNDLE,
            "package/dist/plain.js": "console.log('no webpack runtime');\n",
            **extra,
        },
    )


def integrity_of(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def release_of(tarball: Path, integrity: str | None = None) -> Release:
    return Release("@ohif/app", "9.9.9", integrity or integrity_of(tarball))
