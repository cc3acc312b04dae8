"""A synthetic study made with pydicom: CT slices of 512x512 and a few large multi-frame images."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

# Enhanced CT would need many functional groups; a plain multi-frame Secondary Capture
# of 16-bit frames is what Orthanc and DICOMweb serve the same way, frame by frame.
MULTIFRAME_SOP = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC


@dataclass(frozen=True)
class Instance:
    sop_uid: str
    series_uid: str
    data: bytes
    frames: int


@dataclass(frozen=True)
class Study:
    uid: str
    instances: list[Instance]

    @property
    def size(self) -> int:
        return sum(len(i.data) for i in self.instances)


def _dataset(study_uid: str, series_uid: str, sop_class: str, number: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = "Bench^Patient"
    ds.PatientID = "BENCH-" + study_uid[-8:]
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "BENCH"
    ds.StudyID = "1"
    ds.SeriesNumber = 1 if sop_class == CTImageStorage else 2
    ds.InstanceNumber = number
    ds.Modality = "CT" if sop_class == CTImageStorage else "OT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    return ds


def _encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def make_study(
    ct_slices: int = 200, multiframes: int = 3, frames: int = 40, seed: int = 6
) -> Study:
    """`ct_slices` CT instances of 512x512 (about 512 KB each) plus `multiframes` instances of
    `frames` 512x512 frames (about 20 MB each)."""
    rng = np.random.default_rng(seed)
    study_uid = generate_uid()
    ct_series, mf_series = generate_uid(), generate_uid()
    base = rng.integers(0, 4096, size=(512, 512), dtype=np.uint16)
    instances = []
    for number in range(1, ct_slices + 1):
        ds = _dataset(study_uid, ct_series, CTImageStorage, number)
        ds.Rows = ds.Columns = 512
        ds.ImagePositionPatient = [0, 0, float(number)]
        ds.SliceThickness = 1.0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.PixelData = np.roll(base, number, axis=0).tobytes()
        instances.append(Instance(ds.SOPInstanceUID, ct_series, _encode(ds), 1))
    for number in range(1, multiframes + 1):
        ds = _dataset(study_uid, mf_series, MULTIFRAME_SOP, number)
        ds.Rows = ds.Columns = 512
        ds.NumberOfFrames = frames
        ds.PixelData = np.concatenate([np.roll(base, f, axis=1) for f in range(frames)]).tobytes()
        instances.append(Instance(ds.SOPInstanceUID, mf_series, _encode(ds), frames))
    return Study(study_uid, instances)


def with_new_uids(data: bytes) -> bytes:
    """The same instance under new study/series/instance UIDs (uploads must be new to Orthanc)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return _encode(ds)
