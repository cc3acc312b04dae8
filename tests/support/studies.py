"""DICOM studies with pixels for the tests: a generated CT series, stored through nginx."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.support.dicomweb import access_token, bearer_session, encode
from tests.support.stack import Stack


def ct_series(
    patient: str, slices: int = 12, size: int = 128, study_uid: str | None = None
) -> tuple[str, list[bytes]]:
    """A CT series whose slices show a disc on a checkerboard growing slice by slice
    (pixels a drawn viewport cannot fake); the StudyInstanceUID and the Part 10 files."""
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    y, x = np.mgrid[0:size, 0:size]
    radius = np.hypot(x - size / 2, y - size / 2)
    checker = ((x // 8 + y // 8) % 2) * 300
    files = []
    for number in range(1, slices + 1):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientName, ds.PatientID = f"{patient}^Viewer", patient
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "120000", "", "1"
        ds.StudyDescription, ds.SeriesDescription = "viewer test", "disc"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, number
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.Rows = ds.Columns = size
        ds.PixelSpacing = [1.0, 1.0]
        ds.ImagePositionPatient = [0.0, 0.0, float(number)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness, ds.RescaleIntercept, ds.RescaleSlope = 1.0, -1024, 1
        ds.WindowCenter, ds.WindowWidth = 100, 1200
        disc = radius < size * (0.2 + 0.015 * number)
        ds.PixelData = (np.where(disc, 1224, 124) + checker).astype(np.int16).tobytes()
        files.append(encode(ds))
    return study_uid, files


@dataclass(frozen=True)
class Study:
    uid: str
    orthanc_id: str
    patient: str


def upload(stack: Stack, files: list[bytes]) -> str:
    """The files stored through nginx by an editor; Orthanc's id of their study."""
    editor = bearer_session(stack, access_token(stack, can_edit=True))
    parents = set()
    for data in files:
        answer = editor.post(
            f"{stack.base_url}/zhiva/instances",
            data=data,
            headers={"Content-Type": "application/dicom"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        parents.add(answer.json()["ParentStudy"])
    [study] = parents
    return str(study)
