"""DICOM: C-ECHO from anyone; stores and queries only from registered modalities.

Real pynetdicom clients over TLS against a stack of this module's own (registering
a modality restarts its Orthanc). A client is an AE title, the address its
association comes from (127.0.0.2 is another host to Orthanc) and, optionally, a
client certificate. Every refused row has an accepted twin that differs from it
in the one thing the row is about. What a client certificate can and cannot do
with Orthanc 1.10.1 is said in infra/dicom_ca.py.
"""

from __future__ import annotations

import datetime
import json
import os
import stat
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from infra import dicom_ca
from infra.render import render_native
from services.settings import PROJECT_DIR, SettingsError, load_settings
from tests.conftest import ADMIN_PASSWORD
from tests.support.dicom import Client, c_echo, c_find, c_get, c_move, c_store, register, unregister
from tests.support.dicomweb import access_token, dicomweb, settle_pynetdicom, wheel_dataset
from tests.support.processes import free_port
from tests.support.stack import Stack

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def own(tmp_path_factory, output_dir) -> Iterator[Stack]:
    with Stack.started(tmp_path_factory.mktemp("dicom"), ADMIN_PASSWORD, output_dir) as stack:
        yield stack


@pytest.fixture(scope="module")
def viewer(own: Stack) -> str:
    return access_token(own)


def _port(stack: Stack) -> int:
    return int(stack.env["DICOM_PORT"])


def _store(stack: Stack, tmp_path: Path, client: Client) -> tuple[str, pydicom.Dataset]:
    """C-STORE a fresh CT: "stored", "refused" (no success status) or "no association"."""
    dataset = wheel_dataset("CT_small.dcm")
    path = tmp_path / f"{dataset.SOPInstanceUID}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    try:
        status = c_store(_port(stack), stack.ca_file, path, stack.settings.dicom_aet, client)
    except ConnectionError:
        outcome = "no association"
    else:
        outcome = "stored" if status == 0 else "refused"
    settle_pynetdicom()
    return outcome, dataset


def _found(stack: Stack, token: str, dataset: pydicom.Dataset) -> bool:
    found = dicomweb(stack, token).search_for_instances(
        search_filters={"SOPInstanceUID": dataset.SOPInstanceUID}
    )
    return len(found) == 1


def _certificate(output: str) -> tuple[str, str]:
    """The certificate and key paths `modalities add --certificate` printed."""
    lines = dict(line.split(": ", 1) for line in output.splitlines() if ": " in line)
    return lines["client certificate"], lines["client private key"].split(" (")[0]


def _foreign_client_certificate(directory: Path, aet: str) -> tuple[str, str]:
    """A CA of nobody's and a client certificate it issued, built like the stack's own."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "another CA")])
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, aet)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{aet}-foreign.crt", directory / f"{aet}-foreign.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


# --- C-STORE ------------------------------------------------------------------------------------


def test_unregistered_ae_cannot_store_and_the_same_ae_can_once_registered(own, viewer, tmp_path):
    client = Client("NEWCT")
    outcome, dataset = _store(own, tmp_path, client)
    assert outcome == "refused"
    assert not _found(own, viewer, dataset)

    output = register(own, "NEWCT")
    assert "registered NEWCT at 127.0.0.1" in output
    outcome, dataset = _store(own, tmp_path, client)
    assert outcome == "stored"
    assert _found(own, viewer, dataset)


def test_registered_ae_from_another_host_cannot_store(own, viewer, tmp_path):
    register(own, "HOSTCT", "127.0.0.1")
    outcome, dataset = _store(own, tmp_path, Client("HOSTCT", source="127.0.0.2"))
    assert outcome == "refused"
    assert not _found(own, viewer, dataset)
    # Control: the same AE from its registered address.
    outcome, dataset = _store(own, tmp_path, Client("HOSTCT", source="127.0.0.1"))
    assert outcome == "stored"
    assert _found(own, viewer, dataset)


def test_an_ae_title_spelled_in_another_case_is_the_registered_one_host_included(own, tmp_path):
    # Orthanc compares AE titles without case: another spelling gets no address of its own.
    register(own, "CASECT", "127.0.0.1")
    assert _store(own, tmp_path, Client("casect", source="127.0.0.2"))[0] == "refused"
    assert _store(own, tmp_path, Client("casect", source="127.0.0.1"))[0] == "stored"


def test_a_removed_modality_can_store_no_more(own, viewer, tmp_path):
    register(own, "GONECT")
    assert _store(own, tmp_path, Client("GONECT"))[0] == "stored"
    assert "removed GONECT" in unregister(own, "GONECT")
    outcome, dataset = _store(own, tmp_path, Client("GONECT"))
    assert outcome == "refused"
    assert not _found(own, viewer, dataset)


# --- C-ECHO -------------------------------------------------------------------------------------


def test_c_echo_is_answered_for_any_ae_from_any_host(own):
    for client in (Client("NOBODY"), Client("NOBODY", source="127.0.0.2"), Client("NEWCT")):
        assert c_echo(_port(own), own.ca_file, own.settings.dicom_aet, client), client


# --- C-FIND, C-GET, C-MOVE ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored_study(own, tmp_path_factory) -> str:
    register(own, "QUERYCT")
    outcome, dataset = _store(own, tmp_path_factory.mktemp("study"), Client("QUERYCT"))
    assert outcome == "stored"
    return str(dataset.StudyInstanceUID)


def test_c_find_from_an_unregistered_ae_is_refused(own, stored_study):
    port, ca, aet = _port(own), own.ca_file, own.settings.dicom_aet
    assert c_find(port, ca, stored_study, aet, Client("STRANGER")) == (None, [])
    assert c_find(port, ca, stored_study, aet, Client("QUERYCT", source="127.0.0.2")) == (None, [])
    # Control: the registered AE from its address finds the study.
    assert c_find(port, ca, stored_study, aet, Client("QUERYCT")) == (0, [stored_study])


def test_c_get_from_an_unregistered_ae_is_refused(own, stored_study):
    port, ca, aet = _port(own), own.ca_file, own.settings.dicom_aet
    assert c_get(port, ca, stored_study, aet, Client("STRANGER")) == (None, [])
    status, received = c_get(port, ca, stored_study, aet, Client("QUERYCT"))
    assert status == 0 and len(received) == 1


@pytest.fixture
def storage_scp() -> Iterator[tuple[int, list[str]]]:
    """A plain DICOM storage SCP on loopback: where Orthanc sends what a C-MOVE asks for."""
    received: list[str] = []

    def keep(event) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="MOVEDEST")
    ae.add_supported_context(CTImageStorage)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, keep)]
    )
    try:
        yield port, received
    finally:
        with warnings.catch_warnings():
            # An association the server's threads are still ending has its socket dropped
            # unclosed by pynetdicom, as tests/support/dicom.py says.
            warnings.simplefilter("ignore", ResourceWarning)
            server.shutdown()
            settle_pynetdicom()


def test_c_move_from_an_unregistered_ae_is_refused(own, stored_study, storage_scp):
    scp_port, received = storage_scp
    # The destination is a registered modality (Orthanc sends only to those).
    register(own, "MOVEDEST", "127.0.0.1", "--port", str(scp_port))
    port, ca, aet = _port(own), own.ca_file, own.settings.dicom_aet
    assert c_move(port, ca, stored_study, "MOVEDEST", aet, Client("STRANGER")) is None
    assert received == []
    assert c_move(port, ca, stored_study, "MOVEDEST", aet, Client("QUERYCT")) == 0
    assert len(received) == 1


# --- client certificates ------------------------------------------------------------------------


def test_a_certificate_of_another_ca_is_refused_where_ours_is_accepted(own, viewer, tmp_path):
    output = register(own, "CERTCT", "127.0.0.1", "--certificate")
    ours = _certificate(output)
    foreign = _foreign_client_certificate(tmp_path, "CERTCT")
    port, ca, aet = _port(own), own.ca_file, own.settings.dicom_aet

    # Another CA's certificate ends the handshake: not even C-ECHO.
    assert _store(own, tmp_path, Client("CERTCT", certificate=foreign))[0] == "no association"
    assert not c_echo(port, ca, aet, Client("CERTCT", certificate=foreign))
    # Control: the certificate `modalities add --certificate` issued.
    outcome, dataset = _store(own, tmp_path, Client("CERTCT", certificate=ours))
    assert outcome == "stored"
    assert _found(own, viewer, dataset)
    assert c_echo(port, ca, aet, Client("NOBODY", certificate=ours))


def test_our_certificate_without_registration_stores_nothing(own, viewer, tmp_path):
    """Orthanc 1.10.1 cannot see a certificate in its access checks: registration decides."""
    ours = _certificate(register(own, "LENDER", "127.0.0.1", "--certificate"))
    outcome, dataset = _store(own, tmp_path, Client("UNLISTED", certificate=ours))
    assert outcome == "refused"
    assert not _found(own, viewer, dataset)
    outcome, dataset = _store(own, tmp_path, Client("LENDER", "127.0.0.2", certificate=ours))
    assert outcome == "refused"
    # Control: the AE it was issued to, from its registered address.
    assert _store(own, tmp_path, Client("LENDER", certificate=ours))[0] == "stored"


def test_issued_files_are_where_the_cli_says_and_the_key_is_private(own):
    cert_path, key_path = _certificate(register(own, "FILECT", "127.0.0.1", "--certificate"))
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(Path(key_path).parent).st_mode) == 0o700
    certificate = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    ca = x509.load_pem_x509_certificate((Path(own.env["CONFIG_DIR"]) / "dicom-ca.crt").read_bytes())
    certificate.verify_directly_issued_by(ca)
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "FILECT"
    listed = own.make("admin", ARGS="modalities list").stdout
    assert any(line.split()[:3] == ["FILECT", "127.0.0.1", "104"] for line in listed.splitlines())
    unregister(own, "FILECT")
    assert not Path(cert_path).exists() and not Path(key_path).exists()


# --- lasting registrations ----------------------------------------------------------------------


def test_registrations_survive_make_down_and_up(own, tmp_path):
    register(own, "KEEPCT")
    own.down()
    # The control of the warning below: without the setting, `make up` gives none.
    assert "DICOM_ACCEPT_ANY_STORE" not in own.up().stdout
    assert _store(own, tmp_path, Client("KEEPCT"))[0] == "stored"
    assert _store(own, tmp_path, Client("KEEPCT", source="127.0.0.2"))[0] == "refused"


# --- DICOM_ACCEPT_ANY_STORE ---------------------------------------------------------------------


def test_accept_any_store_lets_any_ae_store_and_make_up_warns(tmp_path_factory, output_dir):
    stack = Stack.prepare(tmp_path_factory.mktemp("any-store"), ADMIN_PASSWORD, output_dir)
    stack.env["DICOM_ACCEPT_ANY_STORE"] = "true"
    up = stack.up()
    try:
        assert "WARNING: DICOM_ACCEPT_ANY_STORE=true" in up.stdout
        token = access_token(stack)
        work = tmp_path_factory.mktemp("any-store-files")
        outcome, dataset = _store(stack, work, Client("ANYONE", source="127.0.0.2"))
        assert outcome == "stored"
        assert _found(stack, token, dataset)
        # Stores only: queries still need a registration.
        assert c_find(
            _port(stack),
            stack.ca_file,
            str(dataset.StudyInstanceUID),
            stack.settings.dicom_aet,
            Client("ANYONE"),
        ) == (None, [])
    finally:
        stack.down()


# --- the operator's command ---------------------------------------------------------------------


def _zhiva_admin(config_dir: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "STATE_DIR"}
    environment["CONFIG_DIR"] = str(config_dir)
    return subprocess.run(
        [str(PROJECT_DIR / ".venv" / "bin" / "zhiva-admin"), "modalities", *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def registry_dir(tmp_path, config_dir) -> Path:
    """A CONFIG_DIR with the set-up's DICOM CA and one modality, CT1 at 10.0.0.5."""
    directory = tmp_path / "config"
    directory.mkdir()
    for name in ("dicom-ca.crt", "dicom-ca.key", "trusted.crt"):
        (directory / name).write_bytes((config_dir / name).read_bytes())
    assert _zhiva_admin(directory, "add", "CT1", "10.0.0.5").returncode == 0
    return directory


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["add", "A" * 17, "10.0.0.6"], "1 to 16 letters"),
        (["add", "CT 2", "10.0.0.6"], "1 to 16 letters"),
        (["add", "CT.2", "10.0.0.6"], "1 to 16 letters"),
        (["add", "CT2", "ct.example.org"], "IPv4 address"),
        (["add", "CT2", "10.0.0.006"], "IPv4 address"),
        (["add", "CT2", "::1"], "IPv4 address"),
        (["add", "CT2", "0.0.0.0"], "not the address of one machine"),  # noqa: S104
        (["add", "CT2", "224.0.0.1"], "not the address of one machine"),
        (["add", "CT2", "10.0.0.6", "--port", "0"], "1-65535"),
        (["add", "CT1", "10.0.0.6"], "registered already"),
        (["add", "ct1", "10.0.0.6"], "registered already"),
        (["remove", "CT9"], "no modality 'CT9'"),
    ],
)
def test_bad_modality_commands_are_refused_with_a_message_and_change_nothing(
    registry_dir, arguments, message
):
    before = (registry_dir / "dicom-modalities.json").read_text()
    result = _zhiva_admin(registry_dir, *arguments)
    assert result.returncode != 0
    assert message in result.stderr
    assert (registry_dir / "dicom-modalities.json").read_text() == before
    # Control: a good command of the same kind works.
    control = ["add", "CT2", "10.0.0.6"] if arguments[0] == "add" else ["remove", "CT1"]
    assert _zhiva_admin(registry_dir, *control).returncode == 0


def test_a_hand_edited_registry_with_one_ae_twice_stops_the_rendering(registry_dir, tmp_path):
    settings = load_settings(
        {"CONFIG_DIR": registry_dir, "STATE_DIR": tmp_path / "state"}, require_secrets=False
    )
    render_native(settings, only=("orthanc.json",))  # control: the registry as the CLI wrote it
    path = registry_dir / "dicom-modalities.json"
    document = json.loads(path.read_text())
    document["modalities"]["ct1"] = {"host": "10.0.0.7", "port": 104}
    path.write_text(json.dumps(document))
    with pytest.raises(dicom_ca.DicomAccessError, match="registered twice"):
        render_native(settings, only=("orthanc.json",))


def test_the_set_up_makes_the_dicom_ca_with_a_private_key_and_keeps_it(config_dir):
    key = config_dir / "dicom-ca.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = (config_dir / "dicom-ca.crt").read_bytes()
    settings = load_settings({"CONFIG_DIR": config_dir}, require_secrets=False)
    dicom_ca.ensure_dicom_ca(settings)
    assert (config_dir / "dicom-ca.crt").read_bytes() == before
    ca = x509.load_pem_x509_certificate(before)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize("value", ["ture", "enabled", "2", "true false"])
def test_a_misspelt_accept_any_store_stops_with_a_message(config_dir, value):
    with pytest.raises(SettingsError, match="DICOM_ACCEPT_ANY_STORE must be true or false"):
        load_settings({"CONFIG_DIR": config_dir, "DICOM_ACCEPT_ANY_STORE": value})
    # Control: the spellings it takes.
    for spelling, meaning in (("true", True), ("False", False), ("1", True), ("no", False)):
        overrides = {"CONFIG_DIR": config_dir, "DICOM_ACCEPT_ANY_STORE": spelling}
        assert load_settings(overrides).dicom_accept_any_store is meaning
