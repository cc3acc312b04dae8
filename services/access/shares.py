"""What a share token may read: one study, through every door and every spelling.

Standard library only (services/access/__init__.py says why). A share token
(services/domain/shares.py) names a study by its StudyInstanceUID and by its
Orthanc ID. `share_verdict` judges a request on every reading of its path
(permissions.py's `readings`), and grants only when each reading is a read of
that study:

- DICOMweb under `/studies/<its UID>/…`: Orthanc's DICOMweb plugin finds a
  series or an instance only inside the study its path names (checked:
  another study's series under this study's path is a 404);
- a study-level QIDO (`/studies?…`) naming its UID exactly once, and WADO-URI
  (`/wado?…`) naming it as `studyUID` (the plugin answers 404 when the object
  is not in that study);
- Orthanc's REST resources whose study is this one: `/studies/<its ID>/…`
  directly, `/series/<ID>/…` and `/instances/<ID>/…` once the caller has
  resolved the ID's study (RESOLVE), never a patient (it may span studies).

Anything else (a write, another study, `/tools/…`, system routes, a patient)
is refused.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .paths import PathRefused
from .permissions import DICOMWEB_ROOTS, READ_METHODS, readings

# Orthanc's identifiers: five groups of eight lower-case hex digits.
ORTHANC_ID = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{8}){4}")
# The query keys that name the study, exactly as Orthanc's DICOMweb plugin reads them: the
# keyword (case-sensitive: `studyinstanceuid=` is ignored, and the answer holds every
# study) and the tag (any case); WADO-URI's `studyUID` (served at /wado).
QIDO_STUDY_KEY = re.compile(r"StudyInstanceUID|0020000[dD]")
WADO_STUDY_KEY = re.compile(r"studyUID")
# Any other spelling of those names is refused: Orthanc might read it either way.
_NAME_CHARACTERS = re.compile(r"[^0-9a-z]")
# Sub-resources of a study, series or instance that leave it (its patient spans studies).
LEAVING = frozenset({"patient"})


class Verdict(enum.Enum):
    GRANT = "grant"
    DENY = "deny"
    RESOLVE = "resolve"  # grant when the Orthanc resource's study is the share's


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str = ""
    # For RESOLVE: the resources whose study must be the share's, as (level, Orthanc ID).
    resources: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SharedStudy:
    uid: str  # StudyInstanceUID
    orthanc_id: str  # Orthanc's ID of the study


def orthanc_arguments(query: str) -> list[tuple[str, str]]:
    """The GET arguments as Orthanc 1.10 reads a query string: split on `&`, then on the
    first `=`, and nothing decoded (`%53tudyInstanceUID` is a name it does not know, so it
    filters nothing: read decoded, it would pass for the study's)."""
    return [
        (name, value)
        for name, _, value in (part.partition("=") for part in query.split("&"))
        if name or value
    ]


def share_verdict(
    method: str, raw_path: str, query: Iterable[tuple[str, str]], study: SharedStudy
) -> Judgement:
    """How a share token of `study` may send `method raw_path?query` (`query`: the arguments
    as Orthanc reads them, `orthanc_arguments`)."""
    if method not in READ_METHODS:
        return Judgement(Verdict.DENY, "a share only reads")
    try:
        all_readings = readings(raw_path)
    except PathRefused as refused:
        return Judgement(Verdict.DENY, f"path refused: {refused}")
    pairs = list(query)
    resources: set[tuple[str, str]] = set()
    for segments in all_readings:
        judgement = _one_reading(segments, pairs, study)
        if judgement.verdict is Verdict.DENY:
            return judgement
        resources.update(judgement.resources)
    if resources:
        return Judgement(Verdict.RESOLVE, resources=tuple(sorted(resources)))
    return Judgement(Verdict.GRANT)


def _one_reading(
    segments: list[str], pairs: list[tuple[str, str]], study: SharedStudy
) -> Judgement:
    if not segments:
        return Judgement(Verdict.DENY, "not a study's resource")
    if segments[0] in DICOMWEB_ROOTS:
        rest = segments[1:]
        if rest[:1] != ["studies"]:
            return Judgement(Verdict.DENY, "DICOMweb outside a study")
        if len(rest) == 1:
            return _named_once(pairs, QIDO_STUDY_KEY, study, "QIDO")
        if rest[1] != study.uid:
            return Judgement(Verdict.DENY, "another study")
        return Judgement(Verdict.GRANT)
    if segments == ["wado"]:
        return _named_once(pairs, WADO_STUDY_KEY, study, "WADO-URI")
    level = segments[0]
    if level not in ("studies", "series", "instances") or len(segments) < 2:
        return Judgement(Verdict.DENY, "not a study's resource")
    if any(segment in LEAVING for segment in segments[2:]):
        return Judgement(Verdict.DENY, "leaves the study")
    identifier = segments[1]
    if not ORTHANC_ID.fullmatch(identifier):
        return Judgement(Verdict.DENY, "not an Orthanc identifier")
    if level == "studies":
        if identifier != study.orthanc_id:
            return Judgement(Verdict.DENY, "another study")
        return Judgement(Verdict.GRANT)
    return Judgement(Verdict.RESOLVE, resources=((level, identifier),))


def _named_once(
    pairs: list[tuple[str, str]], key: re.Pattern[str], study: SharedStudy, what: str
) -> Judgement:
    """A query that names exactly this study, once, under a name Orthanc reads as such (a
    repeated name is read as its last value, a near spelling as no constraint at all)."""
    named = []
    for name, value in pairs:
        if key.fullmatch(name):
            named.append(value)
        elif _NAME_CHARACTERS.sub("", name.lower()) in _near_names(key):
            return Judgement(Verdict.DENY, f"{what}: {name!r} is not a name Orthanc reads")
    if len(named) != 1 or named[0] != study.uid:
        return Judgement(Verdict.DENY, f"{what} must name the shared study, once")
    return Judgement(Verdict.GRANT)


def _near_names(key: re.Pattern[str]) -> frozenset[str]:
    return _QIDO_NEAR if key is QIDO_STUDY_KEY else _WADO_NEAR


_QIDO_NEAR = frozenset({"studyinstanceuid", "0020000d"})
_WADO_NEAR = frozenset({"studyuid"})
