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
# The `typ` of our zhiva tokens (and of OIDC ID tokens), and of OIDC access tokens (RFC 9068).
ZHIVA_TYP = "JWT"
OIDC_ACCESS_TYP = "at+jwt"


class TokenKind(enum.StrEnum):
    AUTH = "auth"
    ACCESS = "access"
    REFRESH = "refresh"
    SHARE = "share"  # reads one study (services/domain/shares.py)


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
        *,
        oidc_issuer: str | None = None,
        oidc_resource: str | None = None,
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
        self.oidc_issuer = oidc_issuer
        self.oidc_resource = oidc_resource
        self._oidc_claims = JWTClaimsRegistry(
            now=_now,
            leeway=LEEWAY_SECONDS,
            iss={"essential": True, "value": oidc_issuer or ""},
            aud={"essential": True, "value": oidc_resource or ""},
            exp={"essential": True},
            iat={"essential": True},
            jti={"essential": True},
            sub={"essential": True},
            client_id={"essential": True},
            fam={"essential": True},
            gen={"essential": True},
            preferred_username={"essential": True},
        )

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
            # A share's lifetime is its own (services/domain/shares.py); this is the default.
            TokenKind.SHARE: 7 * 24 * 3600,
        }
        return cls(
            public,
            private,
            settings.jwt_issuer,
            lifetimes,
            oidc_issuer=settings.oidc_issuer,
            oidc_resource=settings.oidc_resource,
        )

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
        decoded = self._decode(token)
        if decoded.header.get("typ") != ZHIVA_TYP:
            raise TokenInvalid("not a zhiva token (typ)")
        return self._zhiva_claims(decoded.claims, kinds, origin)

    def verify_oidc_access(self, token: str | None) -> dict[str, Any]:
        """The claims of a valid access token of our OpenID Connect provider (RFC 9068).

        The origin is judged by the caller, which knows the client's redirect URIs.
        """
        decoded = self._decode(token)
        if decoded.header.get("typ") != OIDC_ACCESS_TYP:
            raise TokenInvalid("not an OIDC access token (typ)")
        return self._oidc_access_claims(decoded.claims)

    def verify_for_pacs(
        self, token: str | None, kinds: tuple[TokenKind, ...], *, origin: str | None = None
    ) -> dict[str, Any]:
        """A token that may read the PACS: a zhiva token of `kinds`, or an OIDC access token.

        Decoded once; `typ` says which rules apply. An OIDC token's claims have `client_id`
        and `fam`, and its origin is left to the caller.
        """
        decoded = self._decode(token)
        typ = decoded.header.get("typ")
        if typ == ZHIVA_TYP:
            return self._zhiva_claims(decoded.claims, kinds, origin)
        if typ == OIDC_ACCESS_TYP:
            return self._oidc_access_claims(decoded.claims)
        raise TokenInvalid("unexpected token type")

    def _decode(self, token: str | None) -> Any:
        """Signature and header checks shared by every kind of token: one algorithm, our key."""
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
        return decoded

    def _oidc_access_claims(self, claims: dict[str, Any]) -> dict[str, Any]:
        if not (self.oidc_issuer and self.oidc_resource):
            raise TokenInvalid("this codec takes no OIDC tokens")
        _validate(self._oidc_claims, claims)
        _check_types(claims, ("gen", int), ("canEditResource", bool), ("isAdmin", bool))
        _check_types(claims, ("scope", str), ("client_id", str), ("fam", str), ("sub", str))
        _check_types(claims, ("preferred_username", str), ("jti", str))
        return claims

    def _zhiva_claims(
        self,
        claims: dict[str, Any],
        kinds: TokenKind | tuple[TokenKind, ...],
        origin: str | None,
    ) -> dict[str, Any]:
        registry = self._claims_registry((kinds,) if isinstance(kinds, TokenKind) else kinds)
        _validate(registry, claims)
        _check_types(claims, ("gen", int), ("canEditResource", bool), ("isAdmin", bool))

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


def _validate(registry: JWTClaimsRegistry, claims: dict[str, Any]) -> None:
    try:
        registry.validate(claims)
    except ExpiredTokenError:
        raise TokenExpired() from None
    except JoseError as error:
        raise TokenInvalid(f"claims: {error.error} {error.description or ''}".strip()) from None


def _check_types(claims: dict[str, Any], *expected: tuple[str, type]) -> None:
    """Each named claim present with exactly its type (a bool is not an int here)."""
    for name, kind_of in expected:
        value = claims.get(name)
        if not isinstance(value, kind_of) or (kind_of is int and isinstance(value, bool)):
            raise TokenInvalid(f"claim {name} missing or of the wrong type")
