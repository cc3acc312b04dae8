"""What a share token may read, row by row (services/access/shares.py), without a stack.

tests/test_security_shares.py sends the same kinds of requests through nginx and to
Orthanc's own port; here every rule is a row, each refusal beside a granted twin.
"""

from __future__ import annotations

import pytest

from services.access.permissions import (
    SHARED_READ_CLASS,
    STUDY_CLASS_PREFIX,
    handoff_scope,
    study_class,
)
from services.access.shares import SharedStudy, Verdict, orthanc_arguments, share_verdict

A = "1.2.826.0.1.3680043.8.498.1"
B = "1.2.826.0.1.3680043.8.498.2"
A_ID = "0a0a0a0a-0b0b0b0b-0c0c0c0c-0d0d0d0d-0e0e0e0e"
B_ID = "1a1a1a1a-1b1b1b1b-1c1c1c1c-1d1d1d1d-1e1e1e1e"
SERIES_ID = "2a2a2a2a-2b2b2b2b-2c2c2c2c-2d2d2d2d-2e2e2e2e"
STUDY = SharedStudy(A, A_ID)

GRANTED = [
    ("GET", f"/pacs/studies/{A}", []),
    ("HEAD", f"/pacs/studies/{A}/metadata", []),
    ("GET", f"/dicom-web/studies/{A}/series/1.2.3/instances/4.5.6/frames/1", []),
    ("GET", f"/pacs/studies/{A}/series/1.2.3/rendered", []),
    ("GET", f"/pacs/studies/{A}/series", [("SeriesInstanceUID", "9.9")]),
    ("GET", "/pacs/studies", [("StudyInstanceUID", A), ("includefield", "all")]),
    ("GET", "/pacs/studies", [("0020000D", A)]),
    ("GET", "/pacs/studies", [("0020000d", A), ("limit", "1")]),
    ("GET", "/wado", [("requestType", "WADO"), ("studyUID", A), ("objectUID", "7.7")]),
    ("GET", f"/studies/{A_ID}", []),
    ("GET", f"/studies/{A_ID}/archive", []),
    ("GET", f"/studies/{A_ID}/media", []),
    ("GET", f"/studies/{A_ID}/series", []),
]

REFUSED = [
    # Writes, whatever the path.
    ("DELETE", f"/pacs/studies/{A}", []),
    ("POST", f"/pacs/studies/{A}", []),
    ("PUT", f"/studies/{A_ID}/labels/x", []),
    ("POST", f"/studies/{A_ID}/archive", []),
    ("POST", f"/studies/{A_ID}/modify", []),
    ("POST", "/tools/find", []),
    ("POST", "/tools/lookup", []),
    ("POST", "/tools/bulk-content", []),
    # Another study, however spelled.
    ("GET", f"/pacs/studies/{B}", []),
    ("GET", f"/pacs/studies/{B}/series", []),
    ("GET", f"/pacs/studies/{A}/../{B}/metadata", []),
    ("GET", f"/pacs/studies/{A}%2F..%2F{B}/metadata", []),
    ("GET", f"/pacs/studies/{A}/%2e%2e/{B}", []),
    ("GET", f"/pacs/studies/{A}./metadata", []),
    ("GET", f"/PACS/STUDIES/{B}", []),
    ("GET", f"/studies/{B_ID}", []),
    ("GET", f"/studies/{B_ID}/archive", []),
    ("GET", f"/studies/{A_ID}/../{B_ID}", []),
    # What leaves the study, or is no study's.
    ("GET", f"/studies/{A_ID}/patient", []),
    ("GET", f"/series/{SERIES_ID}/patient", []),
    ("GET", f"/patients/{A_ID}", []),
    ("GET", "/patients", []),
    ("GET", "/studies", []),
    ("GET", "/series/not-an-id", []),
    ("GET", "/pacs/series", [("StudyInstanceUID", A)]),
    ("GET", "/pacs/instances", [("StudyInstanceUID", A)]),
    ("GET", "/pacs", []),
    ("GET", "/system", []),
    ("GET", "/statistics", []),
    ("GET", "/changes", []),
    ("GET", "/modalities", []),
    ("GET", "/jobs", []),
    ("GET", "/tools/execute-script", []),
    ("GET", "/app/explorer.html", []),
    # QIDO that does not name this study exactly once, under a name Orthanc reads.
    ("GET", "/pacs/studies", []),
    ("GET", "/pacs/studies", [("StudyInstanceUID", B)]),
    ("GET", "/pacs/studies", [("StudyInstanceUID", A), ("StudyInstanceUID", B)]),
    ("GET", "/pacs/studies", [("StudyInstanceUID", B), ("StudyInstanceUID", A)]),
    ("GET", "/pacs/studies", [("StudyInstanceUID", A), ("StudyInstanceUID", A)]),
    ("GET", "/pacs/studies", [("StudyInstanceUID", A), ("0020000D", B)]),
    ("GET", "/pacs/studies", [("studyinstanceuid", A)]),
    ("GET", "/pacs/studies", [("StudyInstanceUid", A)]),
    ("GET", "/pacs/studies", [("StudyInstanceUID", A), ("study_instance_uid", B)]),
    ("GET", "/pacs/studies", [("StudyInstanceUID", f"{A}\\{B}")]),
    ("GET", "/pacs/studies", [("StudyInstanceUID", "1.2.826*")]),
    ("GET", "/pacs/studies", [("PatientID", "x")]),
    # Names Orthanc does not decode: it would filter nothing (every study in the answer).
    ("GET", "/pacs/studies", orthanc_arguments(f"%53tudyInstanceUID={A}")),
    ("GET", "/pacs/studies", orthanc_arguments(f"StudyInstanceUI%44={A}")),
    ("GET", "/pacs/studies", orthanc_arguments(f"0020000%44={A}")),
    ("GET", "/wado", orthanc_arguments(f"requestType=WADO&%73tudyUID={A}&objectUID=7.7")),
    ("GET", "/pacs/studies", orthanc_arguments(f"StudyInstanceUID={A},{B}")),
    # WADO-URI must name this study, once.
    ("GET", "/wado", [("requestType", "WADO"), ("studyUID", B), ("objectUID", "7.7")]),
    ("GET", "/wado", [("requestType", "WADO"), ("objectUID", "7.7")]),
    ("GET", "/wado", [("studyUID", A), ("studyUID", B)]),
    ("GET", "/wado", [("studyuid", A)]),
]


@pytest.mark.parametrize(("method", "path", "query"), GRANTED)
def test_a_share_reads_its_own_study(method, path, query):
    assert share_verdict(method, path, query, STUDY).verdict is Verdict.GRANT


@pytest.mark.parametrize(("method", "path", "query"), REFUSED)
def test_a_share_reads_nothing_else(method, path, query):
    judgement = share_verdict(method, path, query, STUDY)
    assert judgement.verdict is Verdict.DENY
    assert judgement.reason


@pytest.mark.parametrize("level", ["series", "instances"])
@pytest.mark.parametrize("rest", ["", "/file", "/study", "/metadata", "/archive"])
def test_series_and_instances_are_granted_once_their_study_is_known(level, rest):
    judgement = share_verdict("GET", f"/{level}/{SERIES_ID}{rest}", [], STUDY)
    assert judgement.verdict is Verdict.RESOLVE
    assert judgement.resources == ((level, SERIES_ID),)


def test_the_study_class_is_one_dicomweb_studys_plain_reads():
    assert study_class("GET", f"/pacs/studies/{A}/series/1/metadata") == STUDY_CLASS_PREFIX + A
    assert handoff_scope("GET", f"/pacs/studies/{A}") == STUDY_CLASS_PREFIX + A
    # QIDO, Orthanc REST resources and writes are not in it.
    assert study_class("GET", "/pacs/studies") is None
    assert handoff_scope("GET", f"/instances/{SERIES_ID}/file") == SHARED_READ_CLASS
    assert study_class("DELETE", f"/pacs/studies/{A}") is None
    assert study_class("GET", f"/pacs/studies/{A}/../{B}") is None


def test_arguments_are_read_as_orthanc_reads_them():
    assert orthanc_arguments("a=1&%53tudy=x%2Fy&b&c=d=e&&") == [
        ("a", "1"),
        ("%53tudy", "x%2Fy"),
        ("b", ""),
        ("c", "d=e"),
    ]
