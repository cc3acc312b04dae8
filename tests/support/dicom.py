"""DICOM helpers for the tests: test files from the pydicom wheel, C-STORE over TLS."""

from __future__ import annotations

import gc
import ssl
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification


def sample_file(name: str = "CT_small.dcm") -> Path:
    return Path(get_testdata_file(name))


def tls_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.check_hostname = False  # the association goes to 127.0.0.1; the cert itself is verified
    return context


@contextmanager
def association(
    port: int, ca_file: str | None, contexts: list[tuple[str, str | None]], aet: str = "ZHIVA"
) -> Iterator[Association]:
    """An association to 127.0.0.1:`port` (TLS when `ca_file` is given), always cleaned up.

    pynetdicom closes its socket in `shutdown(); close()` under one `try`, so when
    the peer has already closed the connection (Orthanc after A-RELEASE, or a plain
    association refused) `shutdown()` raises and the socket is left to the garbage
    collector. Collect it here, where that ResourceWarning is expected, so it does
    not surface in some later test.
    """
    ae = AE(ae_title="TESTSCU")
    for abstract_syntax, transfer_syntax in contexts:
        if transfer_syntax:
            ae.add_requested_context(abstract_syntax, transfer_syntax)
        else:
            ae.add_requested_context(abstract_syntax)
    tls_args = (tls_context(ca_file), None) if ca_file else None
    with warnings.catch_warnings():
        # A refused connection drops its socket inside associate(), the same way.
        warnings.simplefilter("ignore", ResourceWarning)
        assoc = ae.associate("127.0.0.1", port, ae_title=aet, tls_args=tls_args)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
        # A refused association can keep its socket open inside a reference cycle
        # the caller's `as` name still reaches (seen behind a container engine's port
        # forwarding): close it here rather than leave it to a later collection.
        transport = getattr(assoc.dul, "socket", None)
        if transport is not None and transport.socket is not None:
            transport.socket.close()
        del assoc
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


def c_echo(port: int, ca_file: str | None, aet: str = "ZHIVA") -> bool:
    """True when a C-ECHO succeeds; `ca_file=None` tries a plain (non-TLS) association."""
    with association(port, ca_file, [(Verification, None)], aet) as assoc:
        if not assoc.is_established:
            return False
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0x0000


def c_store(port: int, ca_file: str, path: Path, aet: str = "ZHIVA") -> int:
    """C-STORE one file over TLS; returns the DIMSE status (0 is success)."""
    dataset = pydicom.dcmread(path)
    contexts = [(dataset.file_meta.MediaStorageSOPClassUID, dataset.file_meta.TransferSyntaxUID)]
    with association(port, ca_file, contexts, aet) as assoc:
        if not assoc.is_established:
            raise ConnectionError("DICOM TLS association refused")
        return int(assoc.send_c_store(dataset).Status)
