"""Who may talk DICOM to the PACS: the stack's own CA, its client certificates, the modalities.

Orthanc (infra/templates/orthanc.json.j2) answers C-ECHO from anyone and C-STORE,
C-FIND, C-MOVE and C-GET only from a registered modality: AE title and source
address must both match an entry of `CONFIG_DIR/dicom-modalities.json`, which
`zhiva-admin modalities add|remove` writes and the rendering turns into
Orthanc's `DicomModalities`. The file is configuration, beside `.env`, so a
registration survives restarts, `make down` and a new state volume.

The CA (`dicom-ca.crt`, `dicom-ca.key`) is Orthanc's only trust anchor for
client certificates: a client that presents a certificate must present one
this CA issued, or the TLS handshake fails. A certificate does not replace
registration: Orthanc 1.10.1 tells its access checks the calling AE title and
address, never whether or which certificate the peer presented, and requiring
certificates of every peer would refuse C-ECHO from anyone.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.settings import Settings, SettingsError

CA_KEY_BITS = 3072
CLIENT_KEY_BITS = 2048
CA_DAYS = 3650
CLIENT_DAYS = 825
DEFAULT_MODALITY_PORT = 104
# Orthanc uses the AE title as the modality's symbolic name, and such a name may hold
# letters, digits, '-' and '_' only; a DICOM AE title has at most 16 characters.
AET_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,16}")
ORGANIZATION = "zhiva local PACS"


class DicomAccessError(SettingsError):
    """A modality, its address or the CA cannot be used; the message says what to do."""


def ca_certificate_path(settings: Settings) -> Path:
    return settings.config_dir / "dicom-ca.crt"


def ca_private_key_path(settings: Settings) -> Path:
    return settings.config_dir / "dicom-ca.key"


def registry_path(settings: Settings) -> Path:
    return settings.config_dir / "dicom-modalities.json"


def clients_dir(settings: Settings) -> Path:
    return settings.config_dir / "dicom-clients"


def client_files(settings: Settings, aet: str) -> tuple[Path, Path]:
    """Where the certificate and the private key issued to `aet` are written."""
    return clients_dir(settings) / f"{aet}.crt", clients_dir(settings) / f"{aet}.key"


# --- files -------------------------------------------------------------------------------------


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Write `path` whole or not at all, with `mode` from its creation on."""
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# --- the CA ------------------------------------------------------------------------------------


def ensure_dicom_ca(settings: Settings, error: type[Exception] = DicomAccessError) -> None:
    """Make the DICOM CA in CONFIG_DIR when it is missing (called by infra/setup.py).

    A problem is raised as `error`: the set-up passes its own error class, which it
    reports as a message rather than a traceback.
    """
    try:
        _ensure_ca(settings)
    except DicomAccessError as problem:
        raise error(str(problem)) from None


def _ensure_ca(settings: Settings) -> None:
    cert_path, key_path = ca_certificate_path(settings), ca_private_key_path(settings)
    if cert_path.exists() and key_path.exists():
        _load_ca(settings)  # a broken pair stops the set-up here, not Orthanc later
        print(f"setup: keeping the DICOM CA {cert_path}", flush=True)
        return
    if cert_path.exists() != key_path.exists():
        raise DicomAccessError(
            f"found only one of {cert_path.name} and {key_path.name}; put back the other, or "
            "remove both (certificates it issued then stop working) and run `make setup`"
        )
    key = rsa.generate_private_key(public_exponent=65537, key_size=CA_KEY_BITS)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, "zhiva local PACS DICOM CA"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    settings.config_dir.mkdir(parents=True, exist_ok=True)
    _replace(key_path, _pem_key(key), 0o600)
    _replace(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    print(f"setup: made the DICOM CA for modalities' client certificates: {cert_path}", flush=True)


def _load_ca(settings: Settings) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    cert_path, key_path = ca_certificate_path(settings), ca_private_key_path(settings)
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as missing:
        raise DicomAccessError(
            f"{missing.filename} is missing: run `make setup` (it makes the DICOM CA)"
        ) from None
    except ValueError:
        raise DicomAccessError(
            f"{cert_path.name} or {key_path.name} is not a PEM certificate / unencrypted key"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.public_key() != certificate.public_key():
        raise DicomAccessError(f"{key_path.name} is not the private key of {cert_path.name}")
    return certificate, key


def issue_client_certificate(settings: Settings, aet: str, host: str) -> tuple[Path, Path]:
    """A client certificate and key for the modality `aet`, signed by the DICOM CA.

    Its common name is the AE title and its address the registered host, for people
    reading it: Orthanc compares neither with the association (see the module's text).
    """
    ca_certificate, ca_key = _load_ca(settings)
    key = rsa.generate_private_key(public_exponent=65537, key_size=CLIENT_KEY_BITS)
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "DICOM modality"),
                    x509.NameAttribute(NameOID.COMMON_NAME, aet),
                ]
            )
        )
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CLIENT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory = clients_dir(settings)
    directory.mkdir(mode=0o700, exist_ok=True)
    cert_path, key_path = client_files(settings, aet)
    _replace(key_path, _pem_key(key), 0o600)
    _replace(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def certificate_expiry(path: Path) -> datetime.datetime | None:
    """When the certificate at `path` expires, or None when there is none (or it is unreadable)."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc
    except (OSError, ValueError):
        return None


# --- the registry of modalities ----------------------------------------------------------------


@dataclass(frozen=True)
class Modality:
    aet: str
    host: str
    port: int = DEFAULT_MODALITY_PORT

    def orthanc(self) -> dict[str, object]:
        """The entry of Orthanc's `DicomModalities`: every DIMSE service the contract names."""
        return {
            "AET": self.aet,
            "Host": self.host,
            "Port": self.port,
            "AllowEcho": True,
            "AllowStore": True,
            "AllowFind": True,
            "AllowMove": True,
            "AllowGet": True,
        }


def check_aet(aet: str) -> str:
    if not AET_PATTERN.fullmatch(aet):
        raise DicomAccessError(
            f"AE title {aet!r}: use 1 to 16 letters, digits, '-' or '_' (Orthanc takes no others "
            "in a modality's name)"
        )
    return aet


def check_host(host: str) -> str:
    """The IPv4 address Orthanc will compare with the peer's, in the form Orthanc prints it."""
    try:
        address = ipaddress.IPv4Address(host.strip())
    except ValueError:
        raise DicomAccessError(
            f"host {host!r}: give the modality's IPv4 address (like 192.168.1.50); Orthanc "
            "compares it, as text, with the address an association comes from, and resolves "
            "no names"
        ) from None
    if (
        address.is_unspecified
        or address.is_multicast
        or address == ipaddress.IPv4Address("255.255.255.255")
    ):
        raise DicomAccessError(f"host {host!r} is not the address of one machine")
    return str(address)


def check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise DicomAccessError(f"port {port}: a TCP port is 1-65535")
    return port


def same_aet(first: str, second: str) -> bool:
    # Orthanc matches AE titles without regard to case, and lets two entries of one AE
    # title make a request from any address when both allow it: one entry per title.
    return first.lower() == second.lower()


def load_modalities(settings: Settings) -> dict[str, Modality]:
    """The registered modalities by AE title; an unreadable or inconsistent file is an error."""
    path = registry_path(settings)
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["modalities"]
        modalities = [
            Modality(
                check_aet(str(aet)),
                check_host(str(entry["host"])),
                check_port(int(entry["port"])),
            )
            for aet, entry in entries.items()
        ]
    except DicomAccessError as problem:
        raise DicomAccessError(f"{path}: {problem}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as problem:
        raise DicomAccessError(
            f"{path} cannot be read ({type(problem).__name__}); fix it, or remove it and "
            'register the modalities again with `make admin ARGS="modalities add AET HOST"`'
        ) from None
    for index, modality in enumerate(modalities):
        if any(same_aet(modality.aet, other.aet) for other in modalities[:index]):
            raise DicomAccessError(
                f"{path}: AE title {modality.aet!r} is registered twice (Orthanc does not tell "
                "case apart); keep one entry"
            )
    return {modality.aet: modality for modality in modalities}


def save_modalities(settings: Settings, modalities: dict[str, Modality]) -> None:
    document = {
        "modalities": {
            m.aet: {"host": m.host, "port": m.port}
            for m in sorted(modalities.values(), key=lambda m: m.aet)
        }
    }
    settings.config_dir.mkdir(parents=True, exist_ok=True)
    _replace(registry_path(settings), (json.dumps(document, indent=2) + "\n").encode(), 0o644)


@contextlib.contextmanager
def registry_lock(settings: Settings) -> Iterator[None]:
    """One change of the registry at a time (two admins at once would lose one's change)."""
    settings.config_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.config_dir / ".dicom-modalities.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def orthanc_modalities(settings: Settings) -> dict[str, dict[str, object]]:
    """Orthanc's `DicomModalities` section: every registered modality, by its AE title."""
    return {aet: modality.orthanc() for aet, modality in load_modalities(settings).items()}
