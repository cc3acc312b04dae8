"""One settings source for the services, the set-up and the rendered infrastructure.

Layers, later wins: defaults, then `CONFIG_DIR/.env`, then the process
environment, then an explicit override dict (tests). Secrets have no
defaults: a missing one stops start-up with a message that says how to fix it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

PROJECT_DIR = Path(__file__).resolve().parents[1]

# The largest body the token and login services take (forms and JSON); nginx holds /auth/
# to it too, so a larger one is refused before it is written anywhere.
AUTH_MAX_BODY = 64 * 1024

# Origins the old system always allowed; its viewers still rely on them (README.md).
ALWAYS_ALLOWED_ORIGINS = ("https://*.zhiva.ai", "https://localhost", "https://localhost:*")

DEFAULTS: dict[str, str] = {
    "HTTPS_PORT": "8443",
    "DICOM_PORT": "4242",
    "BIND_ADDRESS": "127.0.0.1",
    "PUBLIC_HOST": "",
    "ORTHANC_HTTP_PORT": "8042",
    "TOKEN_SERVICE_PORT": "5101",
    "LOGIN_SERVICE_PORT": "5102",
    "POLICY_SERVICE_PORT": "5103",
    "REDIS_PORT": "6390",
    "REDIS_KEY_PREFIX": "zhiva:",
    "ALLOWED_ORIGINS": "",
    "JWT_ISSUER": "zhiva.ai",
    "AUTH_TOKEN_LIFETIME": str(24 * 3600),
    "ACCESS_TOKEN_LIFETIME": str(24 * 3600),
    "REFRESH_TOKEN_LIFETIME": str(30 * 24 * 3600),
    # The OpenID Connect provider's tokens (docs/OIDC.md); a refresh-token family lives
    # REFRESH_TOKEN_LIFETIME from its sign-in, however often it rotates.
    "OIDC_ACCESS_TOKEN_LIFETIME": "3600",
    "OIDC_ID_TOKEN_LIFETIME": "3600",
    "OIDC_SESSION_LIFETIME": str(12 * 3600),
    "CLIENT_MAX_BODY_SIZE": "2000m",
    "DICOM_AET": "ZHIVA",
    # The seed's "C-STORE from any AE"; off, only registered modalities store (infra/dicom_ca.py).
    "DICOM_ACCEPT_ANY_STORE": "false",
}

SECRET_NAMES = ("ADMIN_PASSWORD_HASH", "SECRET_KEY", "REDIS_PASSWORD")


class SettingsError(RuntimeError):
    """The configuration cannot be used; the message says what to do."""


@dataclass(frozen=True)
class Settings:
    config_dir: Path
    state_dir: Path
    # Where installed releases of the OHIF viewer live (infra/viewer.py); several stacks
    # may share one. Default STATE_DIR/viewer.
    viewer_dir: Path
    https_port: int
    dicom_port: int
    bind_address: str
    public_host: str
    orthanc_http_port: int
    token_service_port: int
    login_service_port: int
    policy_service_port: int
    redis_port: int
    redis_key_prefix: str
    allowed_origins: tuple[str, ...]
    jwt_issuer: str
    auth_token_lifetime: int
    access_token_lifetime: int
    refresh_token_lifetime: int
    oidc_access_token_lifetime: int
    oidc_id_token_lifetime: int
    oidc_session_lifetime: int
    client_max_body_size: str
    dicom_aet: str
    dicom_accept_any_store: bool
    database_url: str
    admin_password_hash: str = field(repr=False)
    secret_key: str = field(repr=False)
    redis_password: str = field(repr=False)

    @property
    def longest_token_lifetime(self) -> int:
        """How long any token could still be presented: how long a revocation must be kept."""
        return max(
            self.auth_token_lifetime,
            self.access_token_lifetime,
            self.refresh_token_lifetime,
            self.oidc_access_token_lifetime,
            self.oidc_id_token_lifetime,
        )

    @property
    def oidc_issuer(self) -> str:
        """The OpenID Connect provider's issuer; never JWT_ISSUER, so no token passes as both."""
        return self.public_base_url + "/auth"

    @property
    def oidc_resource(self) -> str:
        """The audience of OIDC access tokens: the PACS (RFC 9068)."""
        return self.public_base_url + "/zhiva/pacs"

    # Files made by the set-up; the names are the old system's so its files carry over.
    @property
    def env_file(self) -> Path:
        return self.config_dir / ".env"

    @property
    def tls_certificate(self) -> Path:
        return self.config_dir / "zhiva.crt"

    @property
    def tls_private_key(self) -> Path:
        return self.config_dir / "zhiva.key"

    @property
    def trusted_certificates(self) -> Path:
        return self.config_dir / "trusted.crt"

    @property
    def jwt_private_key(self) -> Path:
        return self.config_dir / "jwt_priv.pem"

    @property
    def jwt_public_key(self) -> Path:
        return self.config_dir / "jwt_pub.pem"

    @property
    def public_base_url(self) -> str:
        """The URL users reach nginx at; written into tokens, never taken from `Host`."""
        host = self.public_host or "localhost"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # IPv6 literal
        port = "" if self.https_port == 443 else f":{self.https_port}"
        return f"https://{host}{port}"

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.redis_password}@127.0.0.1:{self.redis_port}/0"

    @property
    def origin_patterns(self) -> tuple[str, ...]:
        """Allowed origins: the always-allowed ones, our own public URL and `.env`'s list."""
        return ALWAYS_ALLOWED_ORIGINS + (self.public_base_url,) + self.allowed_origins


def _split_origins(value: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("'\"") for part in value.split(",") if part.strip())


def _int(values: dict[str, str], name: str) -> int:
    raw = values[name]
    try:
        number = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if number <= 0:
        raise SettingsError(f"{name} must be positive, got {number}")
    return number


def _bool(values: dict[str, str], name: str) -> bool:
    # Only the spellings below: a typo must not quietly turn a security switch either way.
    raw = values[name].strip().lower()
    if raw in ("true", "1", "yes", "on"):
        return True
    if raw in ("false", "0", "no", "off", ""):
        return False
    raise SettingsError(f"{name} must be true or false, got {values[name]!r}")


def _port(values: dict[str, str], name: str) -> int:
    port = _int(values, name)
    if port > 65535:
        raise SettingsError(f"{name} must be a TCP port (1-65535), got {port}")
    return port


def raw_values(overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """The merged key/value layers, before typing; used by the set-up too."""
    config_dir = Path(
        (overrides or {}).get("CONFIG_DIR") or os.environ.get("CONFIG_DIR") or PROJECT_DIR
    ).resolve()
    values: dict[str, str] = dict(DEFAULTS)
    env_file = config_dir / ".env"
    if env_file.exists():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    names = (
        set(DEFAULTS)
        | set(SECRET_NAMES)
        | {
            "STATE_DIR",
            "VIEWER_DIR",
            "DATABASE_URL",
            "ZHIVA_AUTH_ALLOWED_ORIGINS",
        }
    )
    values.update({name: os.environ[name] for name in names if name in os.environ})
    values.update({k: str(v) for k, v in (overrides or {}).items()})
    values["CONFIG_DIR"] = str(config_dir)
    return values


def load_settings(
    overrides: dict[str, Any] | None = None, *, require_secrets: bool = True
) -> Settings:
    values = raw_values(overrides)
    config_dir = Path(values["CONFIG_DIR"])
    state_dir = Path(values.get("STATE_DIR") or config_dir / "var")
    if not state_dir.is_absolute():
        state_dir = (config_dir / state_dir).resolve()
    viewer_dir = Path(values.get("VIEWER_DIR") or state_dir / "viewer")
    if not viewer_dir.is_absolute():
        viewer_dir = (config_dir / viewer_dir).resolve()

    missing = [name for name in SECRET_NAMES if not values.get(name)]
    if missing and require_secrets:
        raise SettingsError(
            f"{', '.join(missing)} missing from {config_dir / '.env'}: run `make setup` "
            "(it generates them and asks for the admin password)"
        )

    # The seed's variable name is accepted beside ours; both lists count.
    origins = _split_origins(values.get("ALLOWED_ORIGINS", "")) + _split_origins(
        values.get("ZHIVA_AUTH_ALLOWED_ORIGINS", "")
    )
    settings = Settings(
        config_dir=config_dir,
        state_dir=state_dir,
        viewer_dir=viewer_dir,
        https_port=_port(values, "HTTPS_PORT"),
        dicom_port=_port(values, "DICOM_PORT"),
        bind_address=values["BIND_ADDRESS"],
        public_host=values["PUBLIC_HOST"].strip(),
        orthanc_http_port=_port(values, "ORTHANC_HTTP_PORT"),
        token_service_port=_port(values, "TOKEN_SERVICE_PORT"),
        login_service_port=_port(values, "LOGIN_SERVICE_PORT"),
        policy_service_port=_port(values, "POLICY_SERVICE_PORT"),
        redis_port=_port(values, "REDIS_PORT"),
        redis_key_prefix=values["REDIS_KEY_PREFIX"],
        allowed_origins=origins,
        jwt_issuer=values["JWT_ISSUER"],
        auth_token_lifetime=_int(values, "AUTH_TOKEN_LIFETIME"),
        access_token_lifetime=_int(values, "ACCESS_TOKEN_LIFETIME"),
        refresh_token_lifetime=_int(values, "REFRESH_TOKEN_LIFETIME"),
        oidc_access_token_lifetime=_int(values, "OIDC_ACCESS_TOKEN_LIFETIME"),
        oidc_id_token_lifetime=_int(values, "OIDC_ID_TOKEN_LIFETIME"),
        oidc_session_lifetime=_int(values, "OIDC_SESSION_LIFETIME"),
        client_max_body_size=values["CLIENT_MAX_BODY_SIZE"],
        dicom_aet=values["DICOM_AET"],
        dicom_accept_any_store=_bool(values, "DICOM_ACCEPT_ANY_STORE"),
        database_url=values.get("DATABASE_URL") or f"sqlite:///{state_dir / 'zhiva.db'}",
        admin_password_hash=values.get("ADMIN_PASSWORD_HASH", ""),
        secret_key=values.get("SECRET_KEY", ""),
        redis_password=values.get("REDIS_PASSWORD", ""),
    )
    if settings.jwt_issuer == settings.oidc_issuer:
        # Then an OIDC token and a zhiva token could not be told apart by their issuer.
        raise SettingsError(
            f"JWT_ISSUER must differ from the OpenID Connect issuer {settings.oidc_issuer}"
        )
    return settings
