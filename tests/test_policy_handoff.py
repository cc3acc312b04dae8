"""The hot path: nginx caches grants and tells Orthanc's plugin a request is decided.

A client must gain nothing from either: a forged `X-Zhiva-Decided` header is
replaced by nginx and refused by the plugin, a value binds one method, Orthanc
path and token, and a cached grant never serves another token, method, path or
origin, nor a deny.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import pytest
import requests

from services.access.handoff import (
    bound_value,
    handoff_key,
    matches,
    secret_key_from,
    token_of,
)
from services.domain.tokens import TokenCodec, TokenKind
from services.stores.accounts import identity
from tests.support.dicom import sample_file

PASSWORD = "Handoff-Passw0rd!"


# --- handoff.py, no server ---------------------------------------------------------------


def test_a_value_binds_secret_method_scope_and_token():
    key = handoff_key("a" * 40)
    value = bound_value(key, "GET", "/studies", "t1")
    assert value == bound_value(handoff_key("a" * 40), "GET", "/studies", "t1")
    others = [
        bound_value(handoff_key("b" * 40), "GET", "/studies", "t1"),
        bound_value(key, "DELETE", "/studies", "t1"),
        bound_value(key, "GET", "/studies/", "t1"),
        bound_value(key, "GET", "/Studies", "t1"),
        bound_value(key, "GET", "/studies", "t2"),
        bound_value(key, "GET", "/studies", None),
        # The separator cannot be moved between method and scope.
        bound_value(key, "GET\n/studies", "", "t1"),
    ]
    assert value not in others and len(set(others)) == len(others)
    assert "a" * 40 not in value and "t1" not in value
    with pytest.raises(ValueError):
        handoff_key("")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("SECRET_KEY='abc$def'", "abc$def"),
        ('SECRET_KEY="abc"', "abc"),
        ("SECRET_KEY=abc", "abc"),
        ("SECRET_KEY=", None),
        ("OTHER=abc", None),
    ],
)
def test_secret_key_from_env_file(tmp_path, monkeypatch, line, expected):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    (tmp_path / ".env").write_text(f"# comment\n{line}\n")
    assert secret_key_from(tmp_path) == expected
    assert secret_key_from(tmp_path / "missing") is None
    assert secret_key_from(None) is None


@pytest.mark.parametrize("sent", [None, "", "0" * 64, "x", "é" * 64])
def test_matches_refuses_anything_but_the_value(sent):
    expected = bound_value(handoff_key("k" * 40), "GET", "/system", None)
    assert not matches(sent, expected)
    assert matches(expected, expected)


@pytest.mark.parametrize(
    ("header", "authorization", "query", "expected"),
    [
        ("a", "Bearer b", "c", "a"),
        (" a ", None, None, "a"),
        (None, "Bearer b", "c", "b"),
        ("", "bearer  b ", None, "b"),
        (None, "Basic b", "c", "c"),
        ("  ", "Bearer ", " ", None),
        (None, None, None, None),
    ],
)
def test_both_doors_find_the_same_token(header, authorization, query, expected):
    assert token_of(header, authorization, query) == expected


# --- through the stack ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def users(stack):
    suffix = secrets.token_hex(3)
    codec = TokenCodec.from_settings(stack.settings, can_sign=True)
    made = {
        role: identity(
            stack.create_user(
                f"handoff-{role}-{suffix}", PASSWORD, can_edit=role == "editor", is_admin=False
            )
        )
        for role in ("viewer", "editor")
    }
    return codec, made


def _pacs(stack, method: str, path: str, headers: dict[str, str], **kw) -> requests.Response:
    return stack.http().request(
        method, f"{stack.base_url}/zhiva{path}", headers=headers, timeout=20, **kw
    )


def _forged_values(stack, method: str = "GET", path: str = "/system", token=None) -> list[str]:
    """Forgeries of the value nginx would send for this request, and that value itself last."""
    key = handoff_key(stack.settings.secret_key)
    real = bound_value(key, method, path, token)
    return [
        "1",
        "0" * 64,
        real[:-1] + ("0" if real[-1] != "0" else "1"),
        bound_value(key, "GET", "/system", "another token"),
        real,
    ]


@pytest.mark.stack
@pytest.mark.e2e
def test_forged_decided_header_through_nginx_is_useless(stack, users):
    """Even the real value, sent by a client, is replaced by nginx after the policy decided."""
    codec, made = users
    viewer = codec.issue(TokenKind.ACCESS, made["viewer"])[0]
    upload = Path(sample_file()).read_bytes()
    for value in _forged_values(stack):
        forged = {"X-Zhiva-Decided": value}
        assert _pacs(stack, "GET", "/pacs/studies", forged).status_code == 401
        assert _pacs(stack, "GET", "/system", {**forged, "token": "not-a-token"}).status_code == 403
        response = _pacs(stack, "POST", "/instances", {**forged, "token": viewer}, data=upload)
        assert response.status_code == 403
        # Static Explorer locations do not forward it either (they would not need it anyway).
        assert _pacs(stack, "GET", "/app/explorer.html", forged).status_code == 200


@pytest.mark.stack
def test_orthanc_port_trusts_only_the_exact_value(stack):
    url = f"{stack.orthanc_url}/system"
    for value in _forged_values(stack)[:-1]:
        assert requests.get(url, headers={"X-Zhiva-Decided": value}, timeout=10).status_code == 403
    # The value made from .env's SECRET_KEY is what nginx sends: the plugin lets it pass.
    real = _forged_values(stack)[-1]
    assert requests.get(url, headers={"X-Zhiva-Decided": real}, timeout=10).status_code == 200
    # The value binds that method and path: replayed on anything else, the plugin judges it.
    for method, path, extra in [
        ("GET", "/modalities", {}),
        ("GET", "/system?_method=DELETE", {}),
        ("GET", "/system", {"X-HTTP-Method-Override": "DELETE"}),
        ("POST", "/system", {}),
        ("GET", "/system", {"token": "a-token"}),
    ]:
        headers = {"X-Zhiva-Decided": real, **extra}
        answer = requests.request(method, stack.orthanc_url + path, headers=headers, timeout=10)
        assert answer.status_code == 403, (method, path, extra)


@pytest.mark.stack
@pytest.mark.e2e
def test_nginx_cached_grant_serves_no_other_origin_method_or_token(stack, users):
    codec, made = users
    bound = codec.issue(TokenKind.ACCESS, made["editor"], audience="https://app.zhiva.ai")[0]
    viewer = codec.issue(TokenKind.ACCESS, made["viewer"])[0]
    ok = {"token": bound, "Origin": "https://app.zhiva.ai"}
    assert _pacs(stack, "GET", "/studies", ok).status_code == 200  # now cached
    assert (
        _pacs(stack, "GET", "/studies", {**ok, "Origin": "https://evil.zhiva.ai"}).status_code
        == 403
    )
    # Same path, other token: the viewer's own decision, not the editor's cached one.
    upload = Path(sample_file()).read_bytes()
    assert _pacs(stack, "POST", "/instances", ok, data=upload).status_code == 200
    assert _pacs(stack, "POST", "/instances", {"token": viewer}, data=upload).status_code == 403
    # A deny is not cached: the same request, refused twice, never turns into a grant.
    for _ in range(2):
        assert _pacs(stack, "DELETE", "/studies/0", {"token": viewer}).status_code == 403


def _decisions_about(stack, jti: str, besides: tuple[str, str] | None = None) -> int:
    """How many times the policy service judged the token with this jti (its audit lines),
    leaving out its decisions about `besides` (method, Orthanc-relative path) when given."""
    audit = stack.audit_log().splitlines()
    lines = [json.loads(line) for line in audit if f'"jti":"{jti}"' in line]
    # `spelled` holds the client's spelling where Orthanc reads the path differently.
    return sum(
        1 for line in lines if (line["method"], line.get("spelled", line["path"])) != besides
    )


def _within_one_grant(attempt) -> None:  # type: ignore[no-untyped-def]
    """Run `attempt` until its requests took less than a second: nginx's grant lasts 1-2 s.

    `attempt` returns its outcome and how long its requests took; reading the audit
    trail before and after them (a `cat` in the container) is not part of that.
    """
    for _ in range(5):
        outcome, seconds = attempt()
        if seconds < 0.9:
            assert outcome
            return
    pytest.fail("no attempt fitted in one grant's validity (machine too slow?)")


# Spellings the policy does not count as plain reads (tests/test_policy_decision.py has
# more, without a server): through the real nginx, none may reuse a plain read's grant.
NGINX_NEAR_MISSES = [
    "/modalities",
    "/system",
    "/Pacs/studies",
    "/pacs/studies/ABC",
    "/pacs//studies",
    "/pacs/studies/%2e%2e/x",
    "/pacs/studies/x;y",
    "/instances/x/execute-script",
    "/pacs" + "/a" * 12,
    "/pacs/" + "a" * 129,
]


@pytest.mark.stack
@pytest.mark.e2e
def test_one_grant_serves_a_viewers_plain_reads(stack, users):
    """A viewer opening a study costs one decision per grant, not one per image: one for its
    DICOMweb reads (the study's own class, which share tokens need), one for the rest."""
    codec, made = users
    viewer, claims = codec.issue(TokenKind.ACCESS, made["viewer"])
    headers = {"token": viewer}
    reads = [
        "/pacs/studies/1.2.3/series",
        "/pacs/studies/1.2.3/series/4.5/instances/6.7/frames/1",
        "/instances/0b1d-2c/file",
        "/studies/0b1d-2c/archive",
    ]

    def attempt() -> tuple[bool, float]:
        before = _decisions_about(stack, claims["jti"])
        started = time.monotonic()
        assert _pacs(stack, "GET", "/pacs/studies", headers).status_code == 200
        # Orthanc answers 404 for these made-up ids: what matters is that nginx let them by.
        statuses = [_pacs(stack, "GET", path, headers).status_code for path in reads]
        seconds = time.monotonic() - started
        assert all(status not in (401, 403) for status in statuses), statuses
        return _decisions_about(stack, claims["jti"]) - before <= 2, seconds

    _within_one_grant(attempt)


@pytest.mark.stack
@pytest.mark.e2e
@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/pacs/studies")] + [("GET", path) for path in NGINX_NEAR_MISSES]
)
def test_a_plain_read_grant_serves_no_other_request(stack, users, method, path):
    """nginx's copy of the class (a PCRE) never takes in more than the policy's (Python re)."""
    codec, made = users
    viewer, claims = codec.issue(TokenKind.ACCESS, made["viewer"])
    headers = {"token": viewer}

    def attempt() -> tuple[bool, float]:
        # Counted: decisions about anything but the grant's own request (whose spelling
        # the client may normalise, so the near miss is not looked up by its path).
        grant = ("GET", "/pacs/studies")
        before = _decisions_about(stack, claims["jti"], besides=grant)
        started = time.monotonic()
        assert _pacs(stack, *grant, headers).status_code == 200
        # Right after a plain read's grant: still the policy's own decision, not the grant.
        _pacs(stack, method, path, headers)
        seconds = time.monotonic() - started
        return _decisions_about(stack, claims["jti"], besides=grant) == before + 1, seconds

    _within_one_grant(attempt)
    # And what the policy refuses stays refused, right after the viewer's reads were granted.
    assert _pacs(stack, "GET", "/modalities", headers).status_code == 403
    assert _pacs(stack, "POST", "/pacs/studies", headers, data=b"x").status_code == 403
