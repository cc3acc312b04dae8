"""DICOM helpers for the tests: test files from the pydicom wheel, C-STORE over TLS."""

from __future__ import annotations

import gc
import ssl
import warnings
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification


def sample_file(name: str = "CT_small.dcm") -> Path:
    return Path(get_testdata_file(name))


def tls_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.check_hostname = False  # the association goes to 127.0.0.1; the cert itself is verified
    return context


def c_echo(port: int, ca_file: str | None, aet: str = "ZHIVA") -> bool:
    """True when a C-ECHO succeeds; `ca_file=None` tries a plain (non-TLS) association."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    tls_args = (tls_context(ca_file), None) if ca_file else None
    association = ae.associate("127.0.0.1", port, ae_title=aet, tls_args=tls_args)
    if not association.is_established:
        # pynetdicom leaves the socket of an association the peer cut off to the
        # garbage collector (its shutdown() raises before close()); collect it here,
        # where that ResourceWarning is expected.
        ae.shutdown()
        del association
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        return False
    status = association.send_c_echo()
    association.release()
    return bool(status) and status.Status == 0x0000


def c_store(port: int, ca_file: str, path: Path, aet: str = "ZHIVA") -> int:
    """C-STORE one file over TLS; returns the DIMSE status (0 is success)."""
    dataset = pydicom.dcmread(path)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, dataset.file_meta.TransferSyntaxUID)
    association = ae.associate(
        "127.0.0.1", port, ae_title=aet, tls_args=(tls_context(ca_file), None)
    )
    if not association.is_established:
        raise ConnectionError("DICOM TLS association refused")
    status = association.send_c_store(dataset)
    association.release()
    return int(status.Status)
