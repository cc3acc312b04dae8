"""First-run set-up: TLS certificate, JWT key pair and `.env`. Nothing that exists is regenerated.

Run by `make up` (when something is missing) and by `make setup`. Files that hold
secrets are written with mode 0600 from the start; one that exists and others may
read (a `.env` carried over from the old system, a copied `zhiva.key`) is made
private before anything is added to it, and the set-up says so.

When root runs the stack, its processes run as the system user `zhiva` (SERVICE_USER):
`ensure_service_user` makes it, and `share_secrets` lets it read, not change, the
secrets the services read (group `zhiva`, mode 0640); infra/stack.py does the rest.
"""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import os
import pwd
import secrets
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from infra import console
from infra.dicom_ca import ensure_dicom_ca
from services.domain.passwords import hash_password, weak_password_reason
from services.domain.tokens import MIN_KEY_BITS
from services.settings import DEFAULTS, Settings, load_settings, raw_values

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


say = partial(console.say, prefix="setup: ")


# The system user the stack's processes run as when root starts it (README: Running as root).
SERVICE_USER = "zhiva"
NO_LOGIN_SHELLS = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false")
PRIVATE = 0o600
# Readable by the service user's own group, which holds that user alone.
SHARED = 0o640


@dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: int
    gid: int
    home: str


def service_user() -> ServiceUser | None:
    """The service user when this process is root and the user exists, else None.

    Anyone but root runs the stack as himself: there is nobody to hand it to.
    """
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    if entry.pw_uid == 0 or entry.pw_shell not in NO_LOGIN_SHELLS:
        raise SetupError(
            f"a user named {SERVICE_USER} exists (uid {entry.pw_uid}, shell {entry.pw_shell}); "
            "the stack's services will not run as an account people log in with: remove it "
            f"(userdel {SERVICE_USER}) or take its login shell away "
            f"(usermod -s /usr/sbin/nologin {SERVICE_USER})"
        )
    return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def ensure_service_user() -> ServiceUser:
    """Make the system user (no login shell, no home) when it is missing; root only."""
    for _attempt in range(20):
        user = service_user()
        if user is not None:
            return user
        try:
            made = subprocess.run(
                ["useradd", "--system", "--user-group", "--no-create-home"]
                + ["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"]
                + ["--comment", "zhiva local PACS services", SERVICE_USER],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except FileNotFoundError:
            raise SetupError(
                f"useradd is missing: create a system user {SERVICE_USER} with no login shell "
                "by hand (the stack's processes run as it when root starts them)"
            ) from None
        if made.returncode == 0:
            say(f"made the system user {SERVICE_USER}: the stack's processes run as it")
            continue
        # Another `make up` may hold the lock of /etc/passwd or have made the user meanwhile.
        if "lock" not in made.stderr and "exists" not in made.stderr:
            raise SetupError(f"useradd could not make {SERVICE_USER}: {made.stderr.strip()}")
        time.sleep(0.5)
    raise SetupError(f"useradd could not make {SERVICE_USER}: /etc/passwd stayed locked")


def _secret_mode(status: os.stat_result, user: ServiceUser | None) -> int:
    """The mode a secret file may have: 0640 when its group is the service user's, else 0600."""
    return SHARED if user is not None and status.st_gid == user.gid else PRIVATE


def make_private(path: Path) -> None:
    """Take from a secret file every right beyond `_secret_mode`, saying so when it had any."""
    status = path.stat()
    mode = stat.S_IMODE(status.st_mode)
    allowed = _secret_mode(status, service_user())
    if mode & ~allowed:
        path.chmod(mode & allowed)
        say(
            f"{path} could be read by others (mode {mode:04o}): made it {mode & allowed:04o}, "
            "as every file that holds a secret"
        )


def _shared_group(config_dir: Path) -> int | None:
    """The group new secrets get: the service user's once `make up` shared `.env` with it.

    A key made again (a new certificate, then `supervisorctl signal HUP nginx`) must stay
    readable by the processes that read the old one.
    """
    user = service_user()
    env_file = config_dir / ".env"
    if user is None or not env_file.exists() or env_file.stat().st_gid != user.gid:
        return None
    return user.gid


def write_private(path: Path, data: bytes, group: int | None = None) -> None:
    """Create `path` with mode 0600, or 0640 for `group` (refusing an existing file or link)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    if group is not None:
        os.fchown(fd, -1, group)
        os.fchmod(fd, SHARED)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def share_secrets(settings: Settings, user: ServiceUser) -> None:
    """Let the service user read, and not change, the secrets the services read.

    Owner kept, group the service user's, mode 0640. Root's `make up` reads `.env`
    (STATE_DIR among others): were the file or CONFIG_DIR the service user's, a
    compromised service could choose what root acts on next time.
    """
    paths = (settings.env_file, settings.tls_private_key, settings.jwt_private_key)
    for path in (settings.config_dir, *paths):
        if path.stat().st_uid == user.uid:
            raise SetupError(
                f"{path} belongs to {user.name}, the user the services run as: they could "
                f"change what root's `make up` reads. Give it back: chown root {path}"
            )
    changed = []
    for path in paths:
        status = path.stat()
        if status.st_gid != user.gid or stat.S_IMODE(status.st_mode) != SHARED:
            os.chown(path, -1, user.gid)
            path.chmod(SHARED)
            changed.append(path.name)
    if changed:
        say(
            f"{user.name} (the services) may read {', '.join(changed)}: "
            f"group {user.name}, mode {SHARED:04o}"
        )


def write_public(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o644)


def _tls_certificate(settings: Settings) -> None:
    cert, key = settings.tls_certificate, settings.tls_private_key
    if cert.exists() and key.exists():
        make_private(key)
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
            _shared_group(settings.config_dir),
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
        make_private(private_path)
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
            _shared_group(settings.config_dir),
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
    if env_path.exists():
        # It holds secrets once this function is done, if it holds none yet.
        make_private(env_path)
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
    ensure_dicom_ca(settings, SetupError)
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
