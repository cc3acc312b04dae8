"""The permission table: which role a method on an Orthanc path needs.

Standard library only (services/access/__init__.py says why).

A request is judged on every reading of its path that a server on the way
might make (decoded and dot-resolved like nginx, read the way Orthanc's web
server reads it (`orthanc_path`), split on raw slashes and kept literal like a
server that does not resolve dot segments, any case), and the strictest reading
wins: no spelling of a write route passes as a read. A method override (which
Orthanc honours, `METHOD_OVERRIDE_HEADER` and `METHOD_OVERRIDE_ARGUMENT`) is
refused outright by both doors: no client of ours sends one.
"""

from __future__ import annotations

import enum
import re
from urllib.parse import unquote

from .paths import PathRefused, orthanc_path


class Role(enum.IntEnum):
    """What a request needs; a token's role must be at least this."""

    NONE = 0  # static Explorer files: no token needed
    VIEWER = 1
    EDITOR = 2
    ADMIN = 3
    NOBODY = 99  # refused for every token


READ_METHODS = frozenset({"GET", "HEAD"})
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE"})
MAX_PATH_LENGTH = 4096

RESOURCE_LEVELS = frozenset({"patients", "studies", "series", "instances"})
# DICOMweb roots: ours (`/pacs/`, what viewers are given) and the plugin's default.
DICOMWEB_ROOTS = frozenset({"pacs", "dicom-web"})

# Static Orthanc Explorer files: GET without a token (a browser fetches them without it).
STATIC_PREFIXES = ("/app/",)
STATIC_PATHS = frozenset({"/plugins/explorer.js", "/app", "/"})

# Routes that run code: refused for every token, whatever the method.
FORBIDDEN_PREFIXES = ("/tools/execute-script",)

# Read-only POSTs that Orthanc Explorer and archive downloads need.
READ_POSTS = frozenset(
    {
        "/tools/find",
        "/tools/lookup",
        "/tools/create-archive",
        "/tools/create-media",
        "/tools/create-media-extended",
    }
)
READ_POST_ACTIONS = frozenset({"archive", "media"})  # /{level}/{id}/archive
EDIT_POST_ACTIONS = frozenset({"modify", "anonymize", "merge", "split", "reconstruct"})
EDIT_POSTS = frozenset(
    {"/instances", "/tools/bulk-modify", "/tools/bulk-anonymize", "/tools/bulk-delete"}
)
# GETs that reveal the network configuration are for administrators.
ADMIN_READ_ROOTS = frozenset({"modalities", "peers"})

_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")

# Orthanc runs the method one of these names instead of the request line's (PUT or DELETE;
# the argument on GET only). Names as Orthanc compares them, after it decodes the query.
METHOD_OVERRIDE_HEADER = "x-http-method-override"
METHOD_OVERRIDE_ARGUMENT = "_method"


def _any_spelling(text: str) -> str:
    """A regex for `text` with any of its characters percent-encoded (match case-insensitively)."""
    return "".join(f"(?:{re.escape(char)}|%{ord(char):02x})" for char in text)


# An override argument in a raw query string, however its name is encoded: nginx refuses
# the request with this text (infra/templates/nginx.conf.j2), case-insensitively.
METHOD_OVERRIDE_QUERY = r"(?:^|&)" + _any_spelling(METHOD_OVERRIDE_ARGUMENT) + r"(?:=|&|$)"
_METHOD_OVERRIDE_QUERY = re.compile(METHOD_OVERRIDE_QUERY, re.IGNORECASE)


def overrides_method(header_value: str | None, raw_query: str) -> bool:
    """Whether a request names another method for Orthanc to run (header or argument)."""
    return bool(header_value) or _METHOD_OVERRIDE_QUERY.search(raw_query) is not None


# Plain reads, recognisable from the raw path alone: a resource level or DICOMweb root,
# then up to 11 segments of lower-case letters, digits, `.`, `_` and `-` (no `.` or `..`
# segment, no `%`, no `//`, nothing that spells execute-script). Every such path has one
# reading and needs exactly VIEWER for GET and HEAD (tests/test_policy_decision.py checks the
# pattern against required_role), so for those methods one grant of a token holds for all
# of them: nginx keys its grant cache on this class instead of the URI (SHARED_READ_CLASS,
# infra/templates/nginx.conf.j2). A viewer opening a study asks for hundreds of different
# URIs; with this, the policy service decides about its token once per grant's validity.
# Only constructs that Python's re and nginx's PCRE read alike: nginx uses this text.
SHARED_READ_PATH = (
    r"/(?!.*execute-script)(?:patients|studies|series|instances|pacs|dicom-web)"
    r"(?:/(?!\.\.?(?:/|$))[a-z0-9._-]{1,128}){0,11}/?"
)
SHARED_READ_METHODS = ("GET", "HEAD")
SHARED_READ_CLASS = "shared-read"
_SHARED_READ = re.compile(SHARED_READ_PATH)


def is_shared_read(method: str, raw_path: str) -> bool:
    """Whether nginx may reuse a grant of this token for `method raw_path` (path, no query)."""
    return method in SHARED_READ_METHODS and _SHARED_READ.fullmatch(raw_path) is not None


# A DICOM UID: digits and dots, at most 64 characters.
UID = re.compile(r"[0-9][0-9.]{0,63}")
# The plain reads under one DICOMweb study (`/pacs/studies/<UID>/…`) form a class of their
# own, inside the shared-read class: a share token's grant (services/access/shares.py) is
# the same for all of them, so nginx may reuse it there, and nowhere else.
STUDY_READ_PATH = (
    r"/(?:pacs|dicom-web)/studies/(?<study_uid>[0-9][0-9.]{0,63})"
    r"(?:/(?!\.\.?(?:/|$))[a-z0-9._-]{1,128}){0,9}/?"
)
STUDY_CLASS_PREFIX = "study:"
_STUDY_READ = re.compile(STUDY_READ_PATH.replace("(?<", "(?P<"))


def study_class(method: str, raw_path: str) -> str | None:
    """`study:<UID>` for a plain read under one DICOMweb study, else None (path, no query)."""
    if method not in SHARED_READ_METHODS:
        return None
    match = _STUDY_READ.fullmatch(raw_path)
    return STUDY_CLASS_PREFIX + match.group("study_uid") if match else None


def handoff_scope(method: str, orthanc_uri: str) -> str:
    """What nginx's handoff value binds besides method and token (handoff.py): the class of
    plain reads whose one grant nginx reuses (one DICOMweb study's, or all plain reads),
    else the path as Orthanc reads it. Both doors compute it from Orthanc's reading, so
    they agree."""
    study = study_class(method, orthanc_uri)
    if study is not None:
        return study
    return SHARED_READ_CLASS if is_shared_read(method, orthanc_uri) else orthanc_uri


def readings(raw_path: str) -> list[list[str]]:
    """The segment lists (lower case) that servers on the way could make of `raw_path`."""
    if not isinstance(raw_path, str) or not raw_path.startswith("/"):
        raise PathRefused("not an absolute path")
    if len(raw_path) > MAX_PATH_LENGTH:
        raise PathRefused("path too long")
    try:
        decoded = unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        raise PathRefused("not UTF-8") from None
    # A `%` left after decoding means double encoding: no legitimate Orthanc
    # path has one, and a second decoder on the way would read it differently.
    if _CONTROL.search(decoded) or "%" in decoded:
        raise PathRefused("control character, backslash or double encoding")

    resolved: list[str] = []
    for segment in decoded.lower().split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not resolved:
                raise PathRefused("climbs above the root")
            resolved.pop()
            continue
        resolved.append(segment)

    # Literal: split on the raw slashes, decode each part, keep dot segments.
    literal = [unquote(part).lower() for part in raw_path.split("/") if part]
    # Decoded but not dot-resolved (a server that decodes %2F, then splits).
    decoded_literal = [part for part in decoded.lower().split("/") if part]
    # What Orthanc runs: trailing dots of segments dropped as well.
    orthanc = [part for part in orthanc_path(raw_path).lower().split("/") if part]
    result = [resolved]
    for other in (orthanc, literal, decoded_literal):
        if other != resolved and other not in result:
            result.append(other)
    return result


def _role_for(method: str, segments: list[str]) -> Role:
    path = "/" + "/".join(segments)
    if any(path == p or path.startswith(p + "/") for p in FORBIDDEN_PREFIXES):
        return Role.NOBODY
    if any("execute-script" == s for s in segments):
        return Role.NOBODY
    if method in READ_METHODS:
        if path in STATIC_PATHS or path.startswith(STATIC_PREFIXES):
            return Role.NONE
        if segments and segments[0] in ADMIN_READ_ROOTS:
            return Role.ADMIN
        return Role.VIEWER
    if any(s in (".", "..") for s in segments):
        return Role.ADMIN  # dot segments nobody resolved: only whoever may do anything
    n = len(segments)
    is_resource = n >= 2 and segments[0] in RESOURCE_LEVELS
    if method == "POST":
        if path in READ_POSTS:
            return Role.VIEWER
        if n == 3 and is_resource and segments[2] in READ_POST_ACTIONS:
            return Role.VIEWER
        if path in EDIT_POSTS:
            return Role.EDITOR
        if n == 3 and is_resource and segments[2] in EDIT_POST_ACTIONS:
            return Role.EDITOR
        # STOW-RS: POST {root}/studies and {root}/studies/{uid}
        if n in (2, 3) and segments[0] in DICOMWEB_ROOTS and segments[1] == "studies":
            return Role.EDITOR
        return Role.ADMIN
    if method == "PUT":
        if n >= 4 and is_resource and segments[2] in ("metadata", "labels"):
            return Role.EDITOR
        return Role.ADMIN
    if method == "DELETE":
        if n == 2 and is_resource:
            return Role.EDITOR
        if n >= 4 and is_resource and segments[2] in ("metadata", "labels"):
            return Role.EDITOR
        return Role.ADMIN
    return Role.NOBODY


def required_role(method: str, raw_path: str) -> Role:
    """The least role that may send `method` to `raw_path` (path only, no query).

    Unknown methods and paths that cannot be read one way only need NOBODY.
    """
    method = method.upper() if isinstance(method, str) else ""
    if method not in KNOWN_METHODS:
        return Role.NOBODY
    try:
        all_readings = readings(raw_path)
    except PathRefused:
        return Role.NOBODY
    return max(_role_for(method, segments) for segments in all_readings)


def role_of(can_edit: bool, is_admin: bool) -> Role:
    if is_admin:
        return Role.ADMIN
    return Role.EDITOR if can_edit else Role.VIEWER
