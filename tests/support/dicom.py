"""DICOM helpers for the tests: test files from the pydicom wheel, DIMSE over TLS.

A client is an AE title, the address its association comes from (`source`, a
loopback address here: 127.0.0.2 is another host to Orthanc) and, optionally,
a client certificate and key; `register` adds an AE to the stack's registered
modalities the way an operator does (`make admin ARGS="modalities add …"`).
"""

from __future__ import annotations

import gc
import ssl
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)


def sample_file(name: str = "CT_small.dcm") -> Path:
    return Path(get_testdata_file(name))


@dataclass(frozen=True)
class Client:
    """Who associates: calling AE title, source address, client certificate and key (PEM)."""

    aet: str = "TESTSCU"
    source: str = "127.0.0.1"
    certificate: tuple[str, str] | None = None


DEFAULT_CLIENT = Client()


def tls_context(ca_file: str, certificate: tuple[str, str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.check_hostname = False  # the association goes to 127.0.0.1; the cert itself is verified
    if certificate is not None:
        context.load_cert_chain(*certificate)
    return context


@contextmanager
def association(
    port: int,
    ca_file: str | None,
    contexts: list[tuple[str, str | None]],
    aet: str = "ZHIVA",
    client: Client = DEFAULT_CLIENT,
    **options: Any,
) -> Iterator[Association]:
    """An association to 127.0.0.1:`port` (TLS when `ca_file` is given), always cleaned up.

    pynetdicom closes its socket in `shutdown(); close()` under one `try`, so when
    the peer has already closed the connection (Orthanc after A-RELEASE, after an
    A-ABORT for a request it refuses, or a plain association refused) `shutdown()`
    raises and the socket is dropped unclosed, by pynetdicom's own threads, at any
    moment of the exchange. That ResourceWarning is expected for as long as the
    association lives, so it is ignored until its threads are over and the garbage
    collected, and does not surface in some later test.
    """
    ae = AE(ae_title=client.aet)
    for abstract_syntax, transfer_syntax in contexts:
        if transfer_syntax:
            ae.add_requested_context(abstract_syntax, transfer_syntax)
        else:
            ae.add_requested_context(abstract_syntax)
    tls_args = (tls_context(ca_file, client.certificate), None) if ca_file else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        assoc = ae.associate(
            "127.0.0.1",
            port,
            ae_title=aet,
            tls_args=tls_args,
            bind_address=(client.source, 0),
            **options,
        )
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
            for thread in (assoc, assoc.dul):
                if thread.is_alive():
                    thread.join(timeout=10)
            del assoc
            gc.collect()


def c_echo(
    port: int, ca_file: str | None, aet: str = "ZHIVA", client: Client = DEFAULT_CLIENT
) -> bool:
    """True when a C-ECHO succeeds; `ca_file=None` tries a plain (non-TLS) association."""
    with association(port, ca_file, [(Verification, None)], aet, client) as assoc:
        if not assoc.is_established:
            return False
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0x0000


def _status(response: pydicom.Dataset) -> int | None:
    # Orthanc aborts the association on a request its filter refuses: no status comes back.
    return int(response.Status) if "Status" in response else None


def c_store(
    port: int, ca_file: str, path: Path, aet: str = "ZHIVA", client: Client = DEFAULT_CLIENT
) -> int | None:
    """C-STORE one file over TLS: the DIMSE status (0 is success), None when refused unanswered.

    Raises ConnectionError when no association is made (a TLS handshake refused)."""
    dataset = pydicom.dcmread(path)
    contexts = [(dataset.file_meta.MediaStorageSOPClassUID, dataset.file_meta.TransferSyntaxUID)]
    with association(port, ca_file, contexts, aet, client) as assoc:
        if not assoc.is_established:
            raise ConnectionError("DICOM TLS association refused")
        return _status(assoc.send_c_store(dataset))


def _study_query(study_uid: str) -> pydicom.Dataset:
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    return query


def c_find(
    port: int, ca_file: str, study_uid: str, aet: str = "ZHIVA", client: Client = DEFAULT_CLIENT
) -> tuple[int | None, list[str]]:
    """Study-level C-FIND: (final status or None when refused unanswered, UIDs found)."""
    with association(
        port, ca_file, [(StudyRootQueryRetrieveInformationModelFind, None)], aet, client
    ) as assoc:
        if not assoc.is_established:
            raise ConnectionError("DICOM TLS association refused")
        status, found = None, []
        for response, identifier in assoc.send_c_find(
            _study_query(study_uid), StudyRootQueryRetrieveInformationModelFind
        ):
            status = _status(response)
            if identifier is not None and "StudyInstanceUID" in identifier:
                found.append(str(identifier.StudyInstanceUID))
        return status, found


def c_get(
    port: int, ca_file: str, study_uid: str, aet: str = "ZHIVA", client: Client = DEFAULT_CLIENT
) -> tuple[int | None, list[str]]:
    """Study-level C-GET of CT images: (final status or None, SOP Instance UIDs received)."""
    received: list[str] = []

    def keep(event: Any) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    contexts = [(StudyRootQueryRetrieveInformationModelGet, None), (CTImageStorage, None)]
    with association(
        port,
        ca_file,
        contexts,
        aet,
        client,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, keep)],
    ) as assoc:
        if not assoc.is_established:
            raise ConnectionError("DICOM TLS association refused")
        status = None
        for response, _ in assoc.send_c_get(
            _study_query(study_uid), StudyRootQueryRetrieveInformationModelGet
        ):
            status = _status(response)
        return status, received


def c_move(
    port: int,
    ca_file: str,
    study_uid: str,
    destination: str,
    aet: str = "ZHIVA",
    client: Client = DEFAULT_CLIENT,
) -> int | None:
    """Study-level C-MOVE to the AE `destination`: the final status, or None when refused."""
    with association(
        port, ca_file, [(StudyRootQueryRetrieveInformationModelMove, None)], aet, client
    ) as assoc:
        if not assoc.is_established:
            raise ConnectionError("DICOM TLS association refused")
        status = None
        for response, _ in assoc.send_c_move(
            _study_query(study_uid), destination, StudyRootQueryRetrieveInformationModelMove
        ):
            status = _status(response)
        return status


def register(stack: Any, aet: str, host: str = "127.0.0.1", *options: str) -> str:
    """`make admin ARGS="modalities add AET HOST …"` on `stack`; its output."""
    return stack.make("admin", ARGS=" ".join(["modalities", "add", aet, host, *options])).stdout


def unregister(stack: Any, aet: str) -> str:
    return stack.make("admin", ARGS=f"modalities remove {aet}").stdout
