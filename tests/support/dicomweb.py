"""DICOMweb helpers for the end-to-end client tests: tokens, clients, instances, STOW bodies.

What goes over the wire is built here once: datasets from the pydicom wheel
with fresh UIDs (the wheel's files share UIDs, and Orthanc keeps the first
copy of an instance), synthetic instances whose pixel data is a byte pattern
streamed in frames (so a gigabyte costs no memory), a `multipart/related`
STOW-RS body that requests streams with a Content-Length, and a parser for the
multipart answers of WADO-RS.
"""

from __future__ import annotations

import gc
import hashlib
import io
import struct
import threading
import uuid
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import CTImageStorage

from services.domain.tokens import TokenCodec, TokenKind
from services.stores.accounts import identity

from .dicom import sample_file

PASSWORD = "Dicom-Clients-Passw0rd!"
# What OHIF sends for a whole instance; nginx passes it on unchanged (nginx.conf.j2 says why).
OHIF_INSTANCE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
OHIF_FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
MULTIFRAME_GRAYSCALE_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"


# --- tokens and clients -------------------------------------------------------------------------


def access_token(stack: Any, *, can_edit: bool = False, is_admin: bool = False) -> str:
    """A fresh user of the stack and an access token for it (viewer unless told otherwise)."""
    role = "admin" if is_admin else "editor" if can_edit else "viewer"
    user = stack.create_user(
        f"dicom-{role}-{uuid.uuid4().hex[:8]}", PASSWORD, can_edit=can_edit, is_admin=is_admin
    )
    codec = TokenCodec.from_settings(stack.settings, can_sign=True)
    return codec.issue(TokenKind.ACCESS, identity(user))[0]


def bearer_session(stack: Any, token: str | None) -> requests.Session:
    """A TLS-verifying session of the stack (closed at its `down()`), with the token if any."""
    session = stack.http()
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def dicomweb(stack: Any, token: str) -> DICOMwebClient:
    """dicomweb-client on the DICOMweb root a viewer is given, with a bearer access token."""
    return DICOMwebClient(url=f"{stack.base_url}/zhiva/pacs", session=bearer_session(stack, token))


# --- instances ----------------------------------------------------------------------------------


def fresh_uids(
    dataset: Dataset, study_uid: str | None = None, series_uid: str | None = None
) -> Dataset:
    """Give `dataset` new study/series/instance UIDs (in place) and return it."""
    dataset.StudyInstanceUID = study_uid or generate_uid()
    dataset.SeriesInstanceUID = series_uid or generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    return dataset


def wheel_dataset(name: str, **uids: str) -> Dataset:
    """A file shipped in the pydicom wheel, read whole, with fresh UIDs."""
    with warnings.catch_warnings():
        # Some wheel files carry deliberately odd values (e.g. UIDs with leading zeros).
        warnings.simplefilter("ignore", UserWarning)
        return fresh_uids(pydicom.dcmread(sample_file(name)), **uids)


def encode(dataset: Dataset) -> bytes:
    """The Part 10 file of `dataset`, as stored and as it must come back."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def frames_of(dataset: Dataset) -> list[bytes]:
    """Pixel data per frame: slices of native data, or the encapsulated frames."""
    count = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    if dataset.file_meta.TransferSyntaxUID.is_encapsulated:
        return list(pydicom.encaps.generate_frames(dataset.PixelData, number_of_frames=count))
    size = len(dataset.PixelData) // count
    return [dataset.PixelData[i * size : (i + 1) * size] for i in range(count)]


def pattern_frame(index: int, rows: int, columns: int) -> bytes:
    """16-bit frame whose every pixel is `index` (plus a marker): distinct per frame, no numpy."""
    return struct.pack("<H", (index * 7919 + 1) & 0xFFFF) * (rows * columns)


@dataclass
class SyntheticInstance:
    """A 16-bit MONOCHROME2 instance whose pixel data is generated frame by frame."""

    rows: int
    columns: int
    frames: int
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    sop_uid: str = field(default_factory=generate_uid)
    patient_id: str = "SYNTHETIC"
    modality: str = "OT"
    instance_number: int = 1

    @property
    def frame_size(self) -> int:
        return self.rows * self.columns * 2

    def header(self) -> bytes:
        """The Part 10 file up to and including the Pixel Data element's header."""
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MULTIFRAME_GRAYSCALE_WORD_SC
        meta.MediaStorageSOPInstanceUID = self.sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MULTIFRAME_GRAYSCALE_WORD_SC
        ds.SOPInstanceUID = self.sop_uid
        ds.StudyInstanceUID = self.study_uid
        ds.SeriesInstanceUID = self.series_uid
        ds.PatientID = self.patient_id
        ds.PatientName = "Synthetic^Large"
        ds.StudyDate = "20260101"
        ds.StudyID = "1"
        ds.Modality = self.modality
        ds.SeriesNumber = 1
        ds.InstanceNumber = self.instance_number
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.NumberOfFrames = self.frames
        ds.FrameIncrementPointer = (0x0018, 0x2002)  # Frame Label Vector
        ds.Rows = self.rows
        ds.Columns = self.columns
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        length = self.frame_size * self.frames
        # (7FE0,0010) OW, explicit VR little endian: tag, VR, 2 reserved bytes, 4-byte length.
        return buffer.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length)

    def frame(self, number: int) -> bytes:
        """Frame `number` (1-based, as in WADO-RS)."""
        return pattern_frame(number, self.rows, self.columns)

    def __len__(self) -> int:
        return len(self.header()) + self.frame_size * self.frames

    def chunks(self) -> Iterator[bytes]:
        yield self.header()
        for number in range(1, self.frames + 1):
            yield self.frame(number)

    def md5(self) -> str:
        digest = hashlib.md5()  # noqa: S324 - Orthanc's own attachment checksum, not security
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.hexdigest()


# --- STOW-RS bodies and multipart answers -------------------------------------------------------


class StowBody:
    """A `multipart/related; type="application/dicom"` body streamed part by part.

    requests sends an iterable with a length as a stream with a Content-Length,
    the way a modality or a viewer uploads a study: never whole in memory.
    """

    def __init__(self, parts: Iterable[tuple[int, Iterable[bytes]]]) -> None:
        self.boundary = f"zhiva-{uuid.uuid4().hex}"
        self.parts = list(parts)  # (length, chunk iterable) pairs

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    def _part_head(self) -> bytes:
        return f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()

    def _tail(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode()

    def __len__(self) -> int:
        per_part = len(self._part_head()) + 2  # the CRLF after each part
        return sum(per_part + length for length, _ in self.parts) + len(self._tail())

    def __iter__(self) -> Iterator[bytes]:
        for _, chunks in self.parts:
            yield self._part_head()
            yield from chunks
            yield b"\r\n"
        yield self._tail()


def stow_parts_of_files(files: Iterable[bytes]) -> list[tuple[int, Iterable[bytes]]]:
    return [(len(data), [data]) for data in files]


def stow_parts_of_synthetic(
    instances: Iterable[SyntheticInstance],
) -> list[tuple[int, Iterable[bytes]]]:
    return [(len(instance), instance.chunks()) for instance in instances]


def stow(
    session: requests.Session,
    url: str,
    body: StowBody | Iterable[bytes],
    content_type: str | None = None,
    **kw: Any,
) -> requests.Response:
    """POST a STOW-RS body; `content_type` is needed only for a body that is not a StowBody."""
    if isinstance(body, StowBody):
        content_type = body.content_type
    headers = {"Content-Type": content_type or "", "Accept": "application/dicom+json"}
    return session.post(url, data=body, headers=headers, timeout=kw.pop("timeout", 600), **kw)


def multipart_parts(response: requests.Response) -> list[bytes]:
    """The bodies of a `multipart/related` answer, byte for byte."""
    return split_multipart(response.headers["Content-Type"], response.content)


def split_multipart(content_type: str, content: bytes) -> list[bytes]:
    """The bodies of a `multipart/related` message given its Content-Type and content."""
    boundary = next(
        param.split("=", 1)[1].strip().strip('"')
        for param in content_type.split(";")
        if param.strip().lower().startswith("boundary=")
    )
    delimiter = b"--" + boundary.encode()
    parts = []
    for chunk in content.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        assert body.endswith(b"\r\n"), "a part must end with CRLF before the delimiter"
        parts.append(body[:-2])
    return parts


# --- DICOM (DIMSE) ------------------------------------------------------------------------------


def plain_c_store_refused(port: int, dataset: Dataset, aet: str = "ZHIVA") -> bool:
    """True when a plain (non-TLS) association for C-STORE is refused by the TLS port."""
    ae = AE(ae_title="PLAINSCU")
    ae.add_requested_context(CTImageStorage, dataset.file_meta.TransferSyntaxUID)
    association = ae.associate("127.0.0.1", port, ae_title=aet)
    if association.is_established:
        association.abort()
        return False
    ae.shutdown()
    settle_pynetdicom()
    # pynetdicom's own close raised on the refused connection and left the socket
    # open, held by its log records (which pytest keeps until the report): close it.
    transport = association.dul.socket
    if transport is not None and transport.socket is not None:
        transport.socket.close()
    return True


def settle_pynetdicom() -> None:
    """Wait for pynetdicom's association threads to end, then collect what they leaked.

    As tests/support/dicom.py says, pynetdicom leaves the socket of an association
    the peer cut off to the garbage collector; its threads hold that socket a while
    after `associate()`/`release()` return, so without this wait the
    ResourceWarning fires in whichever later test the collector happens to run.
    """
    for thread in threading.enumerate():
        if isinstance(thread, Association | DULServiceProvider):
            thread.join(timeout=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
