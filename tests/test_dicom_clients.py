"""Real DICOM clients end to end: dicomweb-client, an OHIF-shaped viewer, pynetdicom.

Everything goes through the stack as a user runs it: DICOMweb through nginx
(TLS, auth_request, `/zhiva/pacs`) with a bearer access token, DICOM over
TLS to DICOM_PORT with the generated `trusted.crt`. What is read back is
compared with what was sent, byte for byte where the protocol promises it.
docs/CONNECT.md gives a person the same settings these tests use.
"""

from __future__ import annotations

import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from PIL import Image
from pydicom.uid import generate_uid

from tests.conftest import ADMIN_PASSWORD
from tests.support.dicom import Client, c_echo, c_store, register
from tests.support.dicomweb import (
    OHIF_FRAME_ACCEPT,
    OHIF_INSTANCE_ACCEPT,
    StowBody,
    SyntheticInstance,
    access_token,
    bearer_session,
    dicomweb,
    encode,
    frames_of,
    multipart_parts,
    plain_c_store_refused,
    settle_pynetdicom,
    split_multipart,
    stow,
    stow_parts_of_files,
    stow_parts_of_synthetic,
    wheel_dataset,
)
from tests.support.stack import Stack

pytestmark = pytest.mark.stack

PATIENT_ID = "DICOMWEB-E2E"
STUDY_DATE = "20240315"

# Files of the pydicom wheel: name -> (media type of its frames, can Orthanc render it?).
# Orthanc 1.10 from Debian has no JPEG 2000 decoder and does not render RT Dose.
WHEEL_FILES = {
    "CT_small.dcm": ("application/octet-stream", True),  # CT, explicit VR little endian
    "MR_small.dcm": ("application/octet-stream", True),  # MR, explicit VR little endian
    "rtdose.dcm": ("application/octet-stream", False),  # 15 frames, implicit VR
    "SC_rgb_rle_2frame.dcm": ("image/dicom-rle", True),  # RGB, RLE, 2 frames
    "MR_small_RLE.dcm": ("image/dicom-rle", True),
    "SC_rgb_jpeg_dcmtk.dcm": ("image/jpeg", True),  # JPEG baseline
    "JPEG-lossy.dcm": ("image/jpeg", True),  # JPEG extended, 12 bit
    "JPEGLSNearLossless_08.dcm": ("image/jls", True),
    "MR_small_jp2klossless.dcm": ("image/jp2", False),
    "JPEG2000.dcm": ("image/jp2", False),
}
GENERATED = "generated-multiframe"  # made here with pydicom: 4 frames of 64x48, 16 bit
ALL_FILES = [*WHEEL_FILES, GENERATED]

# `transfer-syntax=*` (what OHIF sends) must reach Orthanc unchanged: DICOMweb plugin 1.7
# answers it with the stored syntax, while without it the plugin transcodes to explicit VR
# little endian (other bytes for every other stored syntax, a 500 for JPEG 2000). So every
# stored syntax is a row here, compressed ones included.


def _generated() -> pydicom.Dataset:
    instance = SyntheticInstance(rows=48, columns=64, frames=4)
    data = instance.header() + b"".join(instance.frame(n) for n in range(1, 5))
    return pydicom.dcmread(io.BytesIO(data))


@pytest.fixture(scope="module")
def tokens(stack: Stack) -> dict[str, str]:
    return {
        "viewer": access_token(stack),
        "editor": access_token(stack, can_edit=True),
        "admin": access_token(stack, can_edit=True, is_admin=True),
    }


@pytest.fixture(scope="module")
def study(stack: Stack, tokens: dict[str, str]) -> dict[str, Any]:
    """One study of every sample file (a series each), stored with STOW-RS by dicomweb-client."""
    study_uid = generate_uid()
    datasets: dict[str, pydicom.Dataset] = {}
    for name in [*WHEEL_FILES, GENERATED]:
        ds = _generated() if name == GENERATED else wheel_dataset(name)
        ds.StudyInstanceUID = study_uid
        # One patient for the whole study, else Orthanc files it under several patients.
        ds.PatientID = PATIENT_ID
        ds.PatientName = "E2E^Dicomweb"
        ds.StudyDate = STUDY_DATE
        datasets[name] = ds
    response = dicomweb(stack, tokens["editor"]).store_instances(list(datasets.values()))
    return {"uid": study_uid, "datasets": datasets, "stow": response}


@pytest.fixture(scope="module")
def raw_study(stack: Stack, tokens: dict[str, str]) -> dict[str, tuple[pydicom.Dataset, bytes]]:
    """Every sample file as written on disk (not re-encoded by a client), in one STOW-RS body."""
    files = {}
    for name in ALL_FILES:
        ds = _generated() if name == GENERATED else wheel_dataset(name)
        files[name] = (ds, encode(ds))
    response = stow(
        bearer_session(stack, tokens["editor"]),
        f"{stack.base_url}/zhiva/pacs/studies",
        StowBody(stow_parts_of_files(data for _, data in files.values())),
    )
    assert response.status_code == 200, response.text[:300]
    return files


def _uids(ds: pydicom.Dataset) -> tuple[str, str, str]:
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def _instance_url(stack: Stack, ds: pydicom.Dataset) -> str:
    study_uid, series_uid, sop_uid = _uids(ds)
    return (
        f"{stack.base_url}/zhiva/pacs/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
    )


# --- STOW-RS and QIDO-RS ------------------------------------------------------------------------


@pytest.mark.e2e
def test_stow_rs_stores_every_file(study):
    response = study["stow"]
    stored = {item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence}
    assert stored == {ds.SOPInstanceUID for ds in study["datasets"].values()}
    assert not response.get("FailedSOPSequence")


@pytest.mark.e2e
def test_stow_rs_with_a_viewer_token_is_refused_and_stores_nothing(stack, tokens):
    ds = wheel_dataset("CT_small.dcm")
    with pytest.raises(requests.HTTPError) as refused:
        dicomweb(stack, tokens["viewer"]).store_instances([ds])
    assert refused.value.response.status_code == 403
    assert (
        dicomweb(stack, tokens["viewer"]).search_for_studies(
            search_filters={"StudyInstanceUID": ds.StudyInstanceUID}
        )
        == []
    )


@pytest.mark.e2e
def test_qido_rs_studies_series_and_instances_with_filters(stack, tokens, study):
    client = dicomweb(stack, tokens["viewer"])
    found = client.search_for_studies(
        search_filters={"PatientID": PATIENT_ID, "StudyDate": "20240301-20240331"}
    )
    assert [pydicom.Dataset.from_json(s).StudyInstanceUID for s in found] == [study["uid"]]
    summary = pydicom.Dataset.from_json(found[0])
    assert summary.NumberOfStudyRelatedInstances == len(study["datasets"])
    assert {"CT", "MR"} <= set(summary.ModalitiesInStudy)
    assert (
        client.search_for_studies(
            search_filters={"PatientID": PATIENT_ID, "StudyDate": "19990101-19991231"}
        )
        == []
    )
    # Orthanc 1.10 does not percent-decode QIDO values: dicomweb-client sends `*` as
    # %2A and matches nothing, so a wildcard is sent as a viewer does, literally.
    wildcard = bearer_session(stack, tokens["viewer"]).get(
        f"{stack.base_url}/zhiva/pacs/studies?PatientName=E2E*&PatientID={PATIENT_ID}"
    )
    assert [s["0020000D"]["Value"][0] for s in wildcard.json()] == [study["uid"]]

    series = client.search_for_series(study["uid"])
    assert len(series) == len(study["datasets"])
    mr = client.search_for_series(study["uid"], search_filters={"Modality": "MR"})
    expected_mr = {
        ds.SeriesInstanceUID for ds in study["datasets"].values() if ds.get("Modality") == "MR"
    }
    assert {pydicom.Dataset.from_json(s).SeriesInstanceUID for s in mr} == expected_mr

    ct = study["datasets"]["CT_small.dcm"]
    instances = client.search_for_instances(
        study["uid"], ct.SeriesInstanceUID, search_filters={"SOPInstanceUID": ct.SOPInstanceUID}
    )
    assert [pydicom.Dataset.from_json(i).SOPInstanceUID for i in instances] == [ct.SOPInstanceUID]
    everything = client.search_for_instances(study["uid"], fields=["Rows"])
    assert len(everything) == len(study["datasets"])


@pytest.mark.e2e
def test_retrieve_urls_in_qido_answers_lead_to_the_study(stack, tokens, study):
    """The URLs Orthanc writes (no /zhiva prefix) are sent on to the checked location."""
    http = bearer_session(stack, tokens["viewer"])
    found = http.get(f"{stack.base_url}/zhiva/pacs/studies?StudyInstanceUID={study['uid']}")
    retrieve_url = found.json()[0]["00081190"]["Value"][0]
    assert retrieve_url == f"{stack.base_url}/pacs/studies/{study['uid']}"
    metadata = http.get(retrieve_url + "/metadata")
    assert metadata.status_code == 200
    assert metadata.history[0].status_code == 308
    assert len(metadata.json()) == len(study["datasets"])
    # The redirect adds no way around the check: without a token the target refuses.
    anonymous = bearer_session(stack, None).get(retrieve_url + "/metadata")
    assert anonymous.status_code == 401


# --- WADO-RS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_FILES)
@pytest.mark.e2e
def test_wado_rs_instance_in_its_stored_syntax_is_byte_for_byte(stack, tokens, raw_study, name):
    ds, data = raw_study[name]
    syntax = ds.file_meta.TransferSyntaxUID
    response = bearer_session(stack, tokens["viewer"]).get(
        _instance_url(stack, ds),
        headers={
            "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={syntax}'
        },
    )
    assert response.status_code == 200, response.text[:300]
    assert multipart_parts(response) == [data]


@pytest.mark.parametrize("name", [n for n in ALL_FILES if n not in ("rtdose.dcm",)])
@pytest.mark.e2e
def test_wado_rs_instance_with_dicomweb_client(stack, tokens, study, name):
    # dicomweb-client itself refuses to ask for implicit VR (rtdose.dcm); the raw test covers it.
    ds = study["datasets"][name]
    syntax = str(ds.file_meta.TransferSyntaxUID)
    got = dicomweb(stack, tokens["viewer"]).retrieve_instance(
        *_uids(ds), media_types=(("application/dicom", syntax),)
    )
    assert got.file_meta.TransferSyntaxUID == syntax
    assert got == ds
    assert got.PixelData == ds.PixelData


@pytest.mark.parametrize("name", ALL_FILES)
@pytest.mark.e2e
def test_ohif_accept_header_returns_the_stored_instance(stack, tokens, raw_study, name):
    ds, data = raw_study[name]
    response = bearer_session(stack, tokens["viewer"]).get(
        _instance_url(stack, ds), headers={"Accept": OHIF_INSTANCE_ACCEPT}
    )
    assert response.status_code == 200, response.text[:300]
    assert multipart_parts(response) == [data]


@pytest.mark.e2e
def test_wado_rs_metadata_of_study_series_and_instance(stack, tokens, study):
    client = dicomweb(stack, tokens["viewer"])
    study_metadata = client.retrieve_study_metadata(study["uid"])
    assert {_value(m, "SOPInstanceUID") for m in study_metadata} == {
        ds.SOPInstanceUID for ds in study["datasets"].values()
    }
    for name in ("CT_small.dcm", "rtdose.dcm", "SC_rgb_rle_2frame.dcm", GENERATED):
        ds = study["datasets"][name]
        series = client.retrieve_series_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID)
        assert [_value(m, "SOPInstanceUID") for m in series] == [ds.SOPInstanceUID]
        meta = client.retrieve_instance_metadata(*_uids(ds))
        for keyword in ("SOPClassUID", "Rows", "Columns", "BitsAllocated", "PatientID"):
            assert _value(meta, keyword) == ds[keyword].value, keyword
        assert int(_value(meta, "NumberOfFrames", 1)) == int(ds.get("NumberOfFrames", 1))
    # Pixel data is not inlined: it is a bulk data reference.
    ct = study["datasets"]["CT_small.dcm"]
    assert "BulkDataURI" in client.retrieve_instance_metadata(*_uids(ct))["7FE00010"]


def _value(meta: dict[str, Any], keyword: str, default: Any = None) -> Any:
    """The first value of `keyword` in a DICOM JSON object."""
    element = meta.get(f"{pydicom.datadict.tag_for_keyword(keyword):08X}")
    return element["Value"][0] if element and "Value" in element else default


@pytest.mark.parametrize("name", ALL_FILES)
@pytest.mark.e2e
def test_wado_rs_frames_are_the_stored_frames(stack, tokens, study, name):
    ds = study["datasets"][name]
    expected = frames_of(ds)
    media_type = WHEEL_FILES.get(name, ("application/octet-stream", True))[0]
    syntax = str(ds.file_meta.TransferSyntaxUID)
    numbers = list(range(1, len(expected) + 1))
    if media_type == "application/octet-stream":
        # Native pixel data, as OHIF asks for it.
        frames = dicomweb(stack, tokens["viewer"]).retrieve_instance_frames(
            *_uids(ds), frame_numbers=numbers, media_types=(("application/octet-stream", "*"),)
        )
    else:
        # Compressed frames in their stored syntax (dicomweb-client knows no
        # image/dicom-rle, so all of these are asked for the same way, by hand).
        response = bearer_session(stack, tokens["viewer"]).get(
            f"{_instance_url(stack, ds)}/frames/{','.join(map(str, numbers))}",
            headers={"Accept": f'multipart/related; type="{media_type}"; transfer-syntax={syntax}'},
        )
        assert response.status_code == 200, response.text[:300]
        frames = multipart_parts(response)
    assert len(frames) == len(expected)
    for got, want in zip(frames, expected, strict=True):
        # Encapsulated frames may carry the fragment's trailing pad byte.
        assert got == want or (len(want) % 2 == 1 and got == want + b"\x00")


@pytest.mark.parametrize("name", [n for n in ALL_FILES if WHEEL_FILES.get(n, (None, True))[1]])
@pytest.mark.e2e
def test_wado_rs_rendered_instance_and_frame(stack, tokens, study, name):
    ds = study["datasets"][name]
    client = dicomweb(stack, tokens["viewer"])
    png = client.retrieve_instance_rendered(*_uids(ds), media_types=("image/png",))
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (ds.Columns, ds.Rows)
    last = int(ds.get("NumberOfFrames", 1))
    jpeg = client.retrieve_instance_frames_rendered(
        *_uids(ds), frame_numbers=[last], media_types=("image/jpeg",)
    )
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and image.size == (ds.Columns, ds.Rows)


# --- DICOM over TLS -----------------------------------------------------------------------------


@pytest.mark.e2e
def test_c_echo_and_c_store_over_tls_then_found_by_qido(stack, tokens, tmp_path: Path):
    port = int(stack.env["DICOM_PORT"])
    modality = Client("E2EMODALITY")
    assert c_echo(port, stack.ca_file, stack.settings.dicom_aet, modality)
    # Stores come from registered modalities only (tests/test_security_dicom.py).
    register(stack, modality.aet, stack.dicom_peer_address)
    ds = wheel_dataset("CT_small.dcm")
    path = tmp_path / "modality.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert c_store(port, stack.ca_file, path, stack.settings.dicom_aet, modality) == 0
    settle_pynetdicom()

    client = dicomweb(stack, tokens["viewer"])
    found = client.search_for_instances(search_filters={"SOPInstanceUID": ds.SOPInstanceUID})
    assert [pydicom.Dataset.from_json(i).SOPInstanceUID for i in found] == [ds.SOPInstanceUID]
    # C-STORE carries the data set, not the file: Orthanc writes its own meta header.
    got = client.retrieve_instance(
        *_uids(ds), media_types=(("application/dicom", str(ds.file_meta.TransferSyntaxUID)),)
    )
    assert got == ds


@pytest.mark.e2e
def test_plain_c_store_association_is_refused_and_stores_nothing(stack, tokens):
    ds = wheel_dataset("CT_small.dcm")
    assert plain_c_store_refused(int(stack.env["DICOM_PORT"]), ds, aet=stack.settings.dicom_aet)
    client = dicomweb(stack, tokens["viewer"])
    assert client.search_for_instances(search_filters={"SOPInstanceUID": ds.SOPInstanceUID}) == []


# --- viewer-shaped traffic ----------------------------------------------------------------------


def _open_study(stack: Stack, token: str | None, study_uid: str, workers: int = 8) -> list[Fetched]:
    """What a web viewer does to open a study: QIDO, then series, metadata and frames in parallel.

    Returns every request made, in order of the steps.
    """
    local = threading.local()

    def get(url: str, accept: str) -> Fetched:
        if not hasattr(local, "session"):
            local.session = bearer_session(stack, token)
        response = local.session.get(url, headers={"Accept": accept}, timeout=60)
        return Fetched(
            url, response.status_code, response.headers.get("Content-Type", ""), response.content
        )

    root = f"{stack.base_url}/zhiva/pacs"
    log: list[Fetched] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        log.append(get(f"{root}/studies?StudyInstanceUID={study_uid}", "application/dicom+json"))
        series_url = f"{root}/studies/{study_uid}/series"
        log.append(get(series_url, "application/dicom+json"))
        series_uids = [s["0020000E"]["Value"][0] for s in log[-1].json()] or ["unknown"]
        metadata = list(
            pool.map(
                lambda uid: get(f"{series_url}/{uid}/metadata", "application/dicom+json"),
                series_uids,
            )
        )
        log += metadata
        frame_urls = []
        for fetched in metadata:
            url = fetched.url
            for instance in fetched.json():
                sop = instance["00080018"]["Value"][0]
                count = int(instance.get("00280008", {}).get("Value", [1])[0])
                base = url.removesuffix("/metadata") + f"/instances/{sop}"
                frame_urls += [f"{base}/frames/{n}" for n in range(1, count + 1)]
        log += list(pool.map(lambda url: get(url, OHIF_FRAME_ACCEPT), frame_urls))
    return log


@dataclass
class Fetched:
    url: str
    status: int
    content_type: str
    body: bytes

    def json(self) -> list[dict[str, Any]]:
        return json.loads(self.body) if self.status == 200 else []


@pytest.fixture(scope="module")
def viewer_study(stack, tokens) -> dict[str, Any]:
    """A CT-like study of three series (two of 12 slices, one multi-frame instance of 10)."""
    study_uid = generate_uid()
    instances = [
        SyntheticInstance(64, 64, 1, study_uid=study_uid, series_uid=series, instance_number=n)
        for series in (generate_uid(), generate_uid())
        for n in range(1, 13)
    ] + [SyntheticInstance(128, 96, 10, study_uid=study_uid)]
    response = stow(
        bearer_session(stack, tokens["editor"]),
        f"{stack.base_url}/zhiva/pacs/studies",
        StowBody(stow_parts_of_synthetic(instances)),
    )
    assert response.status_code == 200, response.text[:300]
    return {"uid": study_uid, "instances": {i.sop_uid: i for i in instances}}


@pytest.mark.e2e
def test_viewer_opening_a_study_in_parallel_succeeds_with_a_viewer_token(
    stack, tokens, viewer_study
):
    log = _open_study(stack, tokens["viewer"], viewer_study["uid"])
    assert [f.url for f in log if f.status != 200] == []
    frames = [f for f in log if "/frames/" in f.url]
    assert len(frames) == 2 * 12 + 10  # every frame of every instance was fetched
    for fetched in frames:
        sop = fetched.url.split("/instances/")[1].split("/")[0]
        number = int(fetched.url.rsplit("/", 1)[1])
        expected = viewer_study["instances"][sop].frame(number)
        assert split_multipart(fetched.content_type, fetched.body) == [expected]


@pytest.mark.e2e
def test_viewer_requests_without_a_token_are_each_refused(stack, tokens, viewer_study):
    with_token = _open_study(stack, tokens["viewer"], viewer_study["uid"])
    urls = [
        (f.url, OHIF_FRAME_ACCEPT if "/frames/" in f.url else "application/dicom+json")
        for f in with_token
    ]
    anonymous = bearer_session(stack, None)

    def get(item: tuple[str, str]) -> int:
        return anonymous.get(item[0], headers={"Accept": item[1]}, timeout=60).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(get, urls))
    assert len(statuses) == len(with_token) > 30
    assert set(statuses) == {401}
    # The viewer's own sequence without a token stops at its first step.
    assert [f.status for f in _open_study(stack, None, viewer_study["uid"])] == [401, 401, 401]


# --- large studies ------------------------------------------------------------------------------


def _lookup(session: requests.Session, stack: Stack, sop_uid: str) -> str:
    found = session.post(f"{stack.base_url}/zhiva/tools/lookup", data=sop_uid, timeout=30).json()
    return next(item["ID"] for item in found if item["Type"] == "Instance")


@pytest.mark.e2e
def test_one_gigabyte_study_through_nginx(stack, tokens):
    """512 MiB in one multi-frame instance, then 512 MiB in 64 files: one STOW-RS request each."""
    study_uid = generate_uid()
    big = SyntheticInstance(1024, 1024, 256, study_uid=study_uid, modality="OT")
    series_uid = generate_uid()
    many = [
        SyntheticInstance(
            1024, 1024, 4, study_uid=study_uid, series_uid=series_uid, instance_number=n
        )
        for n in range(1, 65)
    ]
    editor = bearer_session(stack, tokens["editor"])
    url = f"{stack.base_url}/zhiva/pacs/studies/{study_uid}"
    sent = 0
    started = time.monotonic()
    for batch in ([big], many):
        body = StowBody(stow_parts_of_synthetic(batch))
        sent += len(body)
        response = stow(editor, url, body)
        assert response.status_code == 200, response.text[:300]
        stored = pydicom.Dataset.from_json(response.json())
        assert len(stored.ReferencedSOPSequence) == len(batch)
        assert not stored.get("FailedSOPSequence")
    elapsed = time.monotonic() - started
    assert sent >= 1 << 30
    print(f"\n1 GiB STOW-RS through nginx: {sent / elapsed / 2**20:.0f} MiB/s, {elapsed:.1f} s")

    viewer = bearer_session(stack, tokens["viewer"])
    client = dicomweb(stack, tokens["viewer"])
    assert len(client.search_for_instances(study_uid)) == 1 + len(many)
    # Byte for byte without reading a gigabyte back: Orthanc's MD5 of what it stored.
    big_id = _lookup(viewer, stack, big.sop_uid)
    md5 = viewer.get(f"{stack.base_url}/zhiva/instances/{big_id}/attachments/dicom/md5").text
    assert md5.strip() == big.md5()
    frames = client.retrieve_instance_frames(
        study_uid,
        big.series_uid,
        big.sop_uid,
        frame_numbers=[1, 128, 256],
        media_types=(("application/octet-stream", "*"),),
    )
    assert frames == [big.frame(1), big.frame(128), big.frame(256)]
    last = many[-1]
    assert client.retrieve_instance_frames(
        study_uid,
        series_uid,
        last.sop_uid,
        frame_numbers=[4],
        media_types=(("application/octet-stream", "*"),),
    ) == [last.frame(4)]

    # Leave the session's disk as it was: a gigabyte is not for the other tests.
    admin = bearer_session(stack, tokens["admin"])
    study_id = admin.get(f"{stack.base_url}/zhiva/instances/{big_id}/study").json()["ID"]
    assert admin.delete(f"{stack.base_url}/zhiva/studies/{study_id}").status_code == 200


@pytest.fixture(scope="module")
def small_limit_stack(tmp_path_factory, output_dir):
    """A stack of its own whose nginx takes at most 1 MiB per request."""
    own = Stack.prepare(tmp_path_factory.mktemp("small-limit"), ADMIN_PASSWORD, output_dir)
    own.env["CLIENT_MAX_BODY_SIZE"] = "1m"
    own.up()
    try:
        yield own
    finally:
        own.down()


def _instance_count(session: requests.Session, stack: Stack) -> int:
    response = session.get(f"{stack.base_url}/zhiva/instances", timeout=30)
    assert response.status_code == 200
    return len(response.json())


@pytest.mark.parametrize("streamed", ["content-length", "chunked"])
def test_body_over_the_limit_is_413_with_a_message_and_nothing_is_stored(
    small_limit_stack, streamed
):
    own = small_limit_stack
    editor = bearer_session(own, access_token(own, can_edit=True))
    admin = bearer_session(own, access_token(own, can_edit=True, is_admin=True))
    url = f"{own.base_url}/zhiva/pacs/studies"
    before = _instance_count(admin, own)

    # Under the limit: the same route works (the knob does not just break uploads).
    fits = [SyntheticInstance(256, 256, 1) for _ in range(3)]  # 3 x 128 KiB
    assert stow(editor, url, StowBody(stow_parts_of_synthetic(fits))).status_code == 200

    study_uid = generate_uid()
    over = [SyntheticInstance(256, 256, 4, study_uid=study_uid) for _ in range(3)]  # 1.5 MiB
    body = StowBody(stow_parts_of_synthetic(over))
    assert len(body) > 1 << 20
    if streamed == "chunked":
        response = stow(editor, url, iter(body), content_type=body.content_type)
    else:
        response = stow(editor, url, body)
    assert response.status_code == 413
    assert response.headers["Content-Type"].startswith("application/json")
    assert "too large" in response.json()["message"] and "1m" in response.json()["message"]

    client = dicomweb(own, access_token(own))
    assert client.search_for_studies(search_filters={"StudyInstanceUID": study_uid}) == []
    assert _instance_count(admin, own) == before + len(fits)
