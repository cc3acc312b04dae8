"""The token codec: every JWT this project issues or accepts passes through here.

RS256 only, one key, `kid` in the header; the claims of docs/PROTOCOLS.md (Tokens).
Verification spells out every option (algorithm, required claims, issuer,
kind, origin binding, leeway) so the intended behaviour is visible.
"""

from __future__ import annotations

import enum
import json
import time
import uuid
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import ExpiredTokenError, JoseError
from joserfc.jwk import RSAKey
from joserfc.jws import JWSRegistry
from joserfc.jwt import JWTClaimsRegistry

from services.domain.origins import parse_origin
from services.domain.user import UserRecord

ALGORITHM = "RS256"
MIN_KEY_BITS = 2048
# Clock skew tolerated for exp/iat/nbf; one machine (or one LAN) needs little.
LEEWAY_SECONDS = 10
# Our tokens are under 2 KB; anything much larger is refused before parsing.
MAX_TOKEN_LENGTH = 8192
_ALLOWED_HEADER = {"alg", "typ", "kid"}


class TokenKind(enum.StrEnum):
    AUTH = "auth"
    ACCESS = "access"
    REFRESH = "refresh"


class TokenError(Exception):
    """Base of the token domain errors; the message is safe to show."""


class TokenMissing(TokenError):
    def __init__(self) -> None:
        super().__init__("Missing Token")


class TokenExpired(TokenError):
    def __init__(self) -> None:
        super().__init__("Token Expired")


class TokenInvalid(TokenError):
    """Forged, malformed, of the wrong kind or bound to another origin.

    `reason` is for the logs; clients only ever see "Invalid Token".
    """

    def __init__(self, reason: str) -> None:
        super().__init__("Invalid Token")
        self.reason = reason


class KeyFileError(RuntimeError):
    """A key file is missing or too weak; the message says what to do."""


def load_rsa_key(path: Path) -> RSAKey:
    try:
        key = RSAKey.import_key(path.read_bytes())
    except FileNotFoundError:
        raise KeyFileError(f"JWT key {path} is missing: run `make setup`") from None
    except (ValueError, JoseError) as error:
        raise KeyFileError(f"JWT key {path} is not an RSA key in PEM form: {error}") from None
    bits = key.raw_value.key_size
    if bits < MIN_KEY_BITS:
        raise KeyFileError(
            f"JWT key {path} has {bits} bits; at least {MIN_KEY_BITS} are required "
            "(the old system made 512-bit keys): move it away and run `make setup`"
        )
    return key


class TokenCodec:
    def __init__(
        self,
        public_key: RSAKey,
        private_key: RSAKey | None,
        issuer: str,
        lifetimes: dict[TokenKind, int],
    ) -> None:
        self.public_key = public_key
        self.private_key = private_key
        self.issuer = issuer
        self.lifetimes = lifetimes
        self.kid = public_key.thumbprint()
        # Both registries are built once: building them per call is a measurable share of a
        # verification (bench/instructions.py, docs/BENCHMARKS.md).
        self._signatures = JWSRegistry(algorithms=[ALGORITHM])
        self._claims: dict[tuple[TokenKind, ...], JWTClaimsRegistry] = {}

    def _claims_registry(self, kinds: tuple[TokenKind, ...]) -> JWTClaimsRegistry:
        """The claim checks for tokens of `kinds`; `now` is read at each validation."""
        registry = self._claims.get(kinds)
        if registry is None:
            registry = JWTClaimsRegistry(
                now=_now,
                leeway=LEEWAY_SECONDS,
                iss={"essential": True, "value": self.issuer},
                exp={"essential": True},
                iat={"essential": True},
                jti={"essential": True},
                username={"essential": True},
                kind={"essential": True, "values": [k.value for k in kinds]},
            )
            self._claims[kinds] = registry  # a race builds an equal one twice: harmless
        return registry

    @classmethod
    def from_settings(cls, settings: Any, *, can_sign: bool) -> TokenCodec:
        public = load_rsa_key(settings.jwt_public_key)
        private = load_rsa_key(settings.jwt_private_key) if can_sign else None
        if private is not None and private.thumbprint() != public.thumbprint():
            raise KeyFileError(
                f"{settings.jwt_private_key} and {settings.jwt_public_key} are not one key pair"
            )
        lifetimes = {
            TokenKind.AUTH: settings.auth_token_lifetime,
            TokenKind.ACCESS: settings.access_token_lifetime,
            TokenKind.REFRESH: settings.refresh_token_lifetime,
        }
        return cls(public, private, settings.jwt_issuer, lifetimes)

    def issue(
        self,
        kind: TokenKind,
        user: UserRecord,
        *,
        audience: str | None = None,
        extra: dict[str, Any] | None = None,
        now: int | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Sign a token of `kind` for `user`; returns the token and its claims."""
        if self.private_key is None:
            raise RuntimeError("this codec was built without the private key")
        issued_at = int(time.time()) if now is None else now
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "iat": issued_at,
            "exp": issued_at + self.lifetimes[kind],
            "jti": uuid.uuid4().hex,
            "kind": kind.value,
            "name": user.name,
            "username": user.username,
            "canEditResource": user.can_edit,
            "isAdmin": user.is_admin,
            "gen": user.token_generation,
            **(extra or {}),
        }
        if audience:
            claims["aud"] = audience
        header = {"alg": ALGORITHM, "typ": "JWT", "kid": self.kid}
        token = jwt.encode(header, claims, self.private_key, algorithms=[ALGORITHM])
        return token, claims

    def verify(
        self,
        token: str | None,
        kinds: TokenKind | tuple[TokenKind, ...],
        *,
        origin: str | None = None,
    ) -> dict[str, Any]:
        """The claims of a valid token of one of `kinds`, or a TokenError.

        `origin` is the request's `Origin` header: a token bound to another
        origin is refused; no header means no browser, judged without it.
        """
        if not token:
            raise TokenMissing()
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            raise TokenInvalid("malformed token")
        try:
            decoded = jwt.decode(token, self.public_key, registry=self._signatures)
        except JoseError as error:
            raise TokenInvalid(f"signature or format: {error.error}") from None
        except (ValueError, TypeError, json.JSONDecodeError):
            raise TokenInvalid("malformed token") from None
        header = decoded.header
        if set(header) - _ALLOWED_HEADER or header.get("kid") != self.kid:
            raise TokenInvalid("unexpected header")

        registry = self._claims_registry((kinds,) if isinstance(kinds, TokenKind) else kinds)
        claims = decoded.claims
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise TokenExpired() from None
        except JoseError as error:
            raise TokenInvalid(f"claims: {error.error} {error.description or ''}".strip()) from None
        for name, kind_of in (("gen", int), ("canEditResource", bool), ("isAdmin", bool)):
            if not isinstance(claims.get(name), kind_of) or (
                kind_of is int and isinstance(claims.get(name), bool)
            ):
                raise TokenInvalid(f"claim {name} missing or of the wrong type")

        audience = claims.get("aud")
        if audience is not None:
            if not isinstance(audience, str):
                raise TokenInvalid("aud must be one origin")
            if origin is not None:
                parsed = parse_origin(origin)
                if parsed is None or str(parsed) != audience:
                    raise TokenInvalid("bound to another origin")
        return claims

    def jwks(self) -> dict[str, Any]:
        public = self.public_key.as_dict(private=False)
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": ALGORITHM}]}


def _now() -> int:
    return int(time.time())
