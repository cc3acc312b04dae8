"""First-run set-up: TLS certificate, JWT key pair and `.env`. Nothing that exists is regenerated.

Run by `make up` (when something is missing) and by `make setup`. Files that hold
secrets are written with mode 0600 from the start, never chmod-ed afterwards.
"""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import os
import secrets
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from services.shared.passwords import hash_password, weak_password_reason
from services.shared.settings import DEFAULTS, Settings, load_settings, raw_values
from services.shared.tokens import MIN_KEY_BITS

CERTIFICATE_DAYS = 825  # the longest validity browsers accept for a self-signed server cert
# Internal ports and settings written into a new .env (their current values).
ENV_DEFAULT_NAMES = (
    "ORTHANC_HTTP_PORT",
    "TOKEN_SERVICE_PORT",
    "LOGIN_SERVICE_PORT",
    "POLICY_SERVICE_PORT",
    "REDIS_PORT",
    "REDIS_KEY_PREFIX",
)


class SetupError(RuntimeError):
    """Set-up cannot go on; the message tells the user what to do."""


def say(message: str) -> None:
    print(f"setup: {message}", flush=True)


def write_private(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 (refusing to follow an existing file or link)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def write_public(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o644)


def _tls_certificate(settings: Settings) -> None:
    cert, key = settings.tls_certificate, settings.tls_private_key
    if cert.exists() and key.exists():
        say(f"keeping the TLS certificate {cert}")
    else:
        if cert.exists() != key.exists():
            raise SetupError(
                f"found only one of {cert.name} and {key.name}; put back the other or remove both"
            )
        names: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        if settings.public_host:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(settings.public_host)))
            except ValueError:
                names.append(x509.DNSName(settings.public_host))
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "zhiva local PACS"),
                x509.NameAttribute(NameOID.COMMON_NAME, settings.public_host or "localhost"),
            ]
        )
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(private_key, hashes.SHA256())
        )
        write_private(
            key,
            private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            ),
        )
        write_public(cert, certificate.public_bytes(serialization.Encoding.PEM))
        say(f"made a TLS certificate for {', '.join(str(n.value) for n in names)}: {cert}")
    trusted = settings.trusted_certificates
    if not trusted.exists():
        write_public(trusted, cert.read_bytes())
        say(f"copied the certificate to {trusted} (give this file to modalities and browsers)")


def _jwt_keys(settings: Settings) -> None:
    private_path, public_path = settings.jwt_private_key, settings.jwt_public_key
    if private_path.exists():
        private_key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise SetupError(f"{private_path} is not an RSA private key")
        if private_key.key_size < MIN_KEY_BITS:
            raise SetupError(
                f"{private_path} is a {private_key.key_size}-bit key (the old system made "
                f"512-bit keys, which can be broken); move it and {public_path.name} away and "
                "run `make setup` again: tokens must be re-issued anyway"
            )
        say(f"keeping the JWT key pair {private_path}")
    else:
        if public_path.exists():
            raise SetupError(
                f"{public_path} exists without {private_path}; remove it or restore the pair"
            )
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=MIN_KEY_BITS)
        write_private(
            private_path,
            private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        say(f"made a {MIN_KEY_BITS}-bit RS256 key pair: {private_path}")
    if not public_path.exists():
        write_public(
            public_path,
            private_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )


def ask_admin_password() -> str:
    """From ADMIN_PASSWORD, or asked twice on a terminal; weak passwords are refused."""
    password = os.environ.get("ADMIN_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise SetupError(
                "no admin password: run `make up` on a terminal to be asked for it, "
                "or set ADMIN_PASSWORD in the environment"
            )
        password = getpass.getpass("Admin password (for the /auth/token page): ")
        if getpass.getpass("The same password again: ") != password:
            raise SetupError("the two passwords differ; nothing was saved, try again")
    if not password:
        raise SetupError("the admin password is empty; choose a strong one")
    reason = weak_password_reason(password)
    if reason:
        raise SetupError(f"the admin password is too weak: {reason}")
    return password


def _env_file(config_dir: Path, admin_password: str | None) -> None:
    env_path = config_dir / ".env"
    values = raw_values({"CONFIG_DIR": config_dir})
    existing = env_path.read_text() if env_path.exists() else ""
    lines: list[str] = []
    if not env_path.exists():
        lines += [
            "# zhiva local PACS settings, made by `make setup`. Secrets: keep this file private.",
            "# Allowed viewer origins, comma-separated, * as wildcard (https://*.mydomain.com).",
            "# https://*.zhiva.ai and https://localhost[:port] are always allowed.",
            "ALLOWED_ORIGINS=",
            "# Internal ports, bound to 127.0.0.1 only.",
        ]
        lines += [f"{name}={values.get(name, DEFAULTS[name])}" for name in ENV_DEFAULT_NAMES]
    generated = {
        "SECRET_KEY": lambda: secrets.token_urlsafe(48),
        "REDIS_PASSWORD": lambda: secrets.token_urlsafe(32),
        "ADMIN_PASSWORD_HASH": lambda: hash_password(admin_password or ask_admin_password()),
    }
    for name, make in generated.items():
        if values.get(name):
            continue
        # bcrypt hashes contain `$`; single quotes keep dotenv from expanding them.
        lines.append(f"{name}='{make()}'")
        say(f"wrote {name} to {env_path}")
    if not lines:
        say(f"keeping {env_path}")
        return
    text = (existing.rstrip("\n") + "\n" if existing else "") + "\n".join(lines) + "\n"
    if env_path.exists():
        env_path.write_text(text)
    else:
        write_private(env_path, text.encode())


def ensure_setup(config_dir: Path | None = None) -> Settings:
    """Make whatever is missing; returns the complete settings."""
    overrides = {"CONFIG_DIR": config_dir} if config_dir else None
    settings = load_settings(overrides, require_secrets=False)
    # Asked first, so a refused password leaves nothing half made.
    admin_password = None if settings.admin_password_hash else ask_admin_password()
    settings.config_dir.mkdir(parents=True, exist_ok=True)
    _tls_certificate(settings)
    _jwt_keys(settings)
    _env_file(settings.config_dir, admin_password)
    return load_settings(overrides)


def main() -> int:
    try:
        ensure_setup()
    except SetupError as problem:
        print(f"setup: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nsetup: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
