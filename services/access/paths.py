"""The public prefixes, and how a path is read on its way to Orthanc.

Standard library only (services/access/__init__.py says why).
"""

from __future__ import annotations

from urllib.parse import unquote

# What nginx puts in front of Orthanc, of its DICOMweb root, and of the services.
PACS_PREFIX = "/zhiva"
DICOMWEB_PREFIX = PACS_PREFIX + "/pacs"
AUTH_PREFIX = "/auth"


class PathRefused(ValueError):
    """The path cannot be read one way only (bad encoding, climbs above the root)."""


def split_query(raw_uri: str) -> tuple[str, str]:
    """`/a/b?x=1` -> (`/a/b`, `x=1`); a fragment is dropped (browsers never send one)."""
    path, _, query = raw_uri.partition("?")
    return path.partition("#")[0], query.partition("#")[0]


def _without_dot_segments(path: str) -> str:
    """RFC 3986's remove_dot_segments on an absolute path: `.` and `..` resolved, clamped at `/`."""
    parts = path.split("/")[1:]
    kept: list[str] = []
    for part in parts:
        if part == "..":
            if kept:
                kept.pop()
        elif part != ".":
            kept.append(part)
    trailing = "/" if parts and parts[-1] in (".", "..") else ""
    return "/" + "/".join(kept) + trailing


def orthanc_path(raw_path: str) -> str:
    """The path Orthanc's router and request filter see when `raw_path` reaches its HTTP server.

    Orthanc's web server (CivetWeb) decodes the path once, reads `\\` as `/`, removes
    dot segments, then drops the trailing dots of every segment and merges `//`
    (`/modalities.` is `/modalities`). The Orthanc plugin receives exactly this text.
    """
    if not isinstance(raw_path, str) or not raw_path.startswith("/"):
        raise PathRefused("not an absolute path")
    try:
        decoded = unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        raise PathRefused("not UTF-8") from None
    parts = _without_dot_segments(decoded.replace("\\", "/")).split("/")[1:]
    stripped = [part.rstrip(".") for part in parts]
    kept = [part for part in stripped if part]
    trailing = "/" if kept and not stripped[-1] else ""
    return "/" + "/".join(kept) + trailing
