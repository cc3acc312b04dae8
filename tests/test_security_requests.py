"""One request, one meaning: what the two doors judge is what Orthanc runs.

Orthanc 1.10.1 runs the method an `X-HTTP-Method-Override` header (any request) or a
`_method` argument (GET) names instead of the request line's, and its web server reads
a path its own way (decoded once, dot segments removed, trailing dots of a segment
dropped, `//` merged). Spellings of the routes a viewer must not reach are generated
and sent:

- straight to a real Orthanc whose filter writes down how it read each one
  (tests/support/recording_plugin.py): `permissions.orthanc_path` predicts its path
  exactly, an override is always recognised, and the table's decision on the spelling
  is at least its decision on what Orthanc runs;
- through a copy of the stack's nginx (the stack's policy service deciding) to that
  Orthanc, with a viewer's token: an override is refused with 400, and nothing arrives
  that needs more than a viewer as Orthanc runs it; accepted twins arrive with a
  handoff value that binds exactly what Orthanc runs (and nothing else);
- to the real stack at both doors: the attacks that worked (a viewer deleting through
  an override, reading `/modalities.`, an editor changing the log level) and their
  accepted twins.
"""

from __future__ import annotations

import http.client
import itertools
import json
import secrets
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from services.access.handoff import bound_value, handoff_key, matches, token_of
from services.access.permissions import (
    Role,
    handoff_scope,
    orthanc_path,
    overrides_method,
    required_role,
)
from services.domain.tokens import TokenCodec, TokenKind
from services.stores.accounts import identity
from tests.support.dicom import sample_file
from tests.support.nginx import NginxCopy, listen_on, upstream_to
from tests.support.orthanc import OrthancServer, RecordingOrthanc
from tests.support.processes import free_port

PASSWORD = "Spelling-Passw0rd!"
ORTHANC_ID = "0a1b2c3d-4e5f6a7b-8c9d0e1f-2a3b4c5d-6e7f8a9b"

# What Orthanc must never run for a viewer: writes, administration, code.
HOSTILE_ROUTES = [
    ("DELETE", f"/instances/{ORTHANC_ID}"),
    ("DELETE", f"/studies/{ORTHANC_ID}"),
    ("PUT", f"/instances/{ORTHANC_ID}/metadata/1024"),
    ("DELETE", "/changes"),
    ("PUT", "/tools/log-level"),
    ("PUT", "/modalities/evil"),
    ("GET", "/modalities"),
    ("GET", "/peers/"),
    ("POST", "/tools/execute-script"),
    ("POST", "/instances"),
    ("POST", "/tools/reset"),
]
# Their accepted twins: reads a viewer may make, spelled the same ways.
READ_ROUTES = [
    ("GET", "/studies"),
    ("GET", f"/instances/{ORTHANC_ID}/file"),
    ("GET", "/pacs/studies/1.2.840.1/series"),
    ("GET", "/system"),
]


def _respelled(path: str) -> list[tuple[str, str]]:
    """(label, spelling) pairs of `path` that some server on the way might read as `path`."""
    segments = path.strip("/").split("/")
    first, rest = segments[0], "/".join(segments[1:])
    tail = "/" + rest if rest else ""
    trailing = "/" if path.endswith("/") else ""
    last_dot = path.rstrip("/")
    spellings = {
        "plain": path,
        "trailing-dot": last_dot + "." + trailing,
        "trailing-dots": last_dot + ".." + trailing,
        "trailing-%2e": last_dot + "%2e" + trailing,
        "trailing-%2E%2E": last_dot + "%2E%2E" + trailing,
        "first-segment-dot": f"/{first}.{tail}",
        "upper-case": path.upper(),
        "leading-//": "/" + path,
        "inner-//": f"/{first}/{tail}" if tail else path + "//",
        "dot-segment": "/." + path,
        "%2e-segment": "/%2e" + path,
        "climb-back": "/x/.." + path,
        "%2e%2e-climb-back": "/x/%2e%2e" + path,
        "three-dots-segment": "/..." + path,
        "encoded-slash": f"/{first}%2f{rest}" if rest else path,
        "encoded-letter": f"/%{ord(first[0]):02x}{first[1:]}{tail}",
        "trailing-slash": path if trailing else path + "/",
        "trailing-dot-slash": last_dot + "./",
    }
    seen: dict[str, str] = {}
    for label, spelling in spellings.items():
        seen.setdefault(spelling, label)
    return [(label, spelling) for spelling, label in seen.items()]


# GET carrying an override Orthanc honours (or an encoding of it), on the routes a viewer
# would need it for; and a POST whose header turns it into a DELETE.
OVERRIDE_TARGETS = [
    f"/instances/{ORTHANC_ID}",
    f"/studies/{ORTHANC_ID}",
    "/changes",
    "/tools/log-level",
    "/modalities/evil",
]
OVERRIDES = [
    ("header-DELETE", "GET", {"X-HTTP-Method-Override": "DELETE"}, ""),
    ("header-delete", "GET", {"X-HTTP-Method-Override": "delete"}, ""),
    ("header-PUT", "GET", {"X-HTTP-Method-Override": "PUT"}, ""),
    ("post-header-DELETE", "POST", {"X-HTTP-Method-Override": "DELETE"}, ""),
    ("arg-DELETE", "GET", {}, "_method=DELETE"),
    ("arg-put", "GET", {}, "_method=put"),
    ("arg-%5F", "GET", {}, "%5Fmethod=DELETE"),
    ("arg-encoded-name", "GET", {}, "%5f%6d%65thod=DELETE"),
    ("arg-second", "GET", {}, "limit=1&_method=DELETE"),
]


def _cases() -> Iterator[Any]:
    for method, path in HOSTILE_ROUTES:
        for label, spelling in _respelled(path):
            yield pytest.param(method, spelling, "", {}, id=f"{method}-{path}-{label}")
    for path, (label, method, headers, query) in itertools.product(OVERRIDE_TARGETS, OVERRIDES):
        yield pytest.param(method, path, query, headers, id=f"{path}-{label}")


def _twins() -> Iterator[tuple[str, str, str]]:
    for method, path in READ_ROUTES:
        for label, spelling in _respelled(path):
            if required_role(method, spelling) <= Role.VIEWER:
                yield method, spelling, f"{method}-{path}-{label}"


CASES = list(_cases())
TWINS = [pytest.param(method, path, id=name) for method, path, name in _twins()]
DIRECT_TWINS = [
    pytest.param(method, path, "", {}, id=f"twin-{name}") for method, path, name in _twins()
]


def orthanc_method(method: str, headers: dict[str, str], query: str) -> str | None:
    """The method Orthanc 1.10.1 runs: its override rules (None: it answers 400). It compares
    argument names as sent (`%5Fmethod` is no override), which the doors need not rely on."""
    named = next((v for k, v in headers.items() if k.lower() == "x-http-method-override"), "")
    if not named and method == "GET":
        arguments = (part.partition("=") for part in query.split("&"))
        named = next((value for name, _, value in arguments if name == "_method"), "")
    if not named:
        return method
    return named.upper() if named.upper() in ("PUT", "DELETE") else None


def send(
    port: int,
    method: str,
    target: str,
    headers: dict[str, str],
    context: ssl.SSLContext | None = None,
) -> int:
    """Send `target` exactly as written (no client-side normalisation); the status."""
    if context is None:
        connection: http.client.HTTPConnection = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=30
        )
    else:
        connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=30)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        if method in ("POST", "PUT"):
            connection.putheader("Content-Length", "0")
        connection.endheaders()
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _target(path: str, query: str) -> str:
    return path + ("?" + query if query else "")


# --- straight to Orthanc: what it runs is what the table and its reading predict -------


@pytest.fixture(scope="module")
def recorder(tmp_path_factory) -> Iterator[RecordingOrthanc]:
    server = RecordingOrthanc(tmp_path_factory.mktemp("recording-orthanc"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize(("method", "path", "query", "headers"), CASES + DIRECT_TWINS)
def test_orthanc_reads_every_spelling_as_the_table_predicts(recorder, method, path, query, headers):
    probe = secrets.token_hex(8)
    send(recorder.port, method, _target(path, query), {**headers, "X-Probe": probe})
    record = recorder.record_of(probe)
    runs = orthanc_method(method, headers, query)
    if record is None:
        # Orthanc refused it before its filter (400): nothing ran.
        assert runs is None
        return
    assert record["uri"] == orthanc_path(path)
    assert record["method"] == runs
    overridden = overrides_method(
        next((v for k, v in headers.items() if k.lower() == "x-http-method-override"), None),
        query,
    )
    if overridden:
        return  # both doors refuse the request outright
    assert runs == method, "Orthanc ran another method and the doors did not see an override"
    assert required_role(method, path) >= required_role(record["method"], record["uri"])


# --- through the stack's nginx to that Orthanc, with a viewer's token --------------------


@pytest.fixture(scope="module")
def viewer_token(stack) -> str:
    codec = TokenCodec.from_settings(stack.settings, can_sign=True)
    user = stack.create_user(f"spelling-viewer-{secrets.token_hex(3)}", PASSWORD)
    return codec.issue(TokenKind.ACCESS, identity(user))[0]


@pytest.fixture(scope="module")
def nginx_to_recorder(stack, recorder, tmp_path_factory) -> Iterator[tuple[int, ssl.SSLContext]]:
    port = free_port()
    copy = NginxCopy(
        stack,
        tmp_path_factory.mktemp("nginx-to-recorder"),
        lambda conf: upstream_to(listen_on(conf, port), "orthanc", recorder.port),
    )
    copy.start(f"https://localhost:{port}/zhiva/app/explorer.html")
    try:
        yield port, ssl.create_default_context(cafile=stack.ca_file)
    finally:
        copy.stop()


def _arrival(stack, recorder, port, context, method, path, query, headers, token):
    """(nginx's status, how Orthanc read it or None, whether its handoff value binds it)."""
    probe = secrets.token_hex(8)
    sent = {**headers, "token": token, "X-Probe": probe}
    status = send(port, method, _target("/zhiva" + path, query), sent, context)
    record = recorder.record_of(probe)
    if record is None:
        return status, None, False
    found = token_of(record["headers"].get("token"), record["headers"].get("authorization"), None)
    scope = handoff_scope(record["method"], record["uri"])
    expected = bound_value(handoff_key(stack.settings.secret_key), record["method"], scope, found)
    return status, record, matches(record["headers"].get("x-zhiva-decided"), expected)


@pytest.mark.stack
@pytest.mark.parametrize(("method", "path", "query", "headers"), CASES)
def test_no_spelling_reaches_orthanc_as_a_viewers_decided_request(
    stack, recorder, nginx_to_recorder, viewer_token, method, path, query, headers
):
    port, context = nginx_to_recorder
    status, record, bound = _arrival(
        stack, recorder, port, context, method, path, query, headers, viewer_token
    )
    if overrides_method(headers.get("X-HTTP-Method-Override"), query):
        assert status == 400
        assert record is None
        return
    # Whether or not its handoff value binds it, nothing a viewer may not do gets this far.
    if record is not None:
        needed = required_role(record["method"], record["uri"])
        assert needed <= Role.VIEWER, f"bypass: {record['method']} {record['uri']} needs {needed}"
        assert not bound or needed <= Role.VIEWER


@pytest.mark.stack
@pytest.mark.parametrize(("method", "path"), TWINS)
def test_a_viewers_read_arrives_bound_to_what_orthanc_runs(
    stack, recorder, nginx_to_recorder, viewer_token, method, path
):
    port, context = nginx_to_recorder
    status, record, bound = _arrival(
        stack, recorder, port, context, method, path, "", {}, viewer_token
    )
    assert record is not None, f"nginx answered {status}"
    assert record["uri"] == orthanc_path(path)
    assert bound, "the plugin would ask the policy again"
    # The plugin refuses the same value for any other request (method, path or token).
    key = handoff_key(stack.settings.secret_key)
    value = record["headers"]["x-zhiva-decided"]
    scope = handoff_scope("GET", record["uri"])
    assert not matches(value, bound_value(key, "DELETE", record["uri"], viewer_token))
    assert not matches(value, bound_value(key, "GET", scope, viewer_token + "x"))
    assert not matches(value, bound_value(key, "GET", "/modalities", viewer_token))


# --- the real stack, both doors: the attacks that worked, and their twins ---------------


@pytest.fixture(scope="module")
def people(stack) -> dict[str, str]:
    """Access tokens of a viewer, an editor and an admin."""
    codec = TokenCodec.from_settings(stack.settings, can_sign=True)
    suffix = secrets.token_hex(3)
    rights = {"viewer": (False, False), "editor": (True, False), "admin": (True, True)}
    tokens = {}
    for role, (can_edit, is_admin) in rights.items():
        user = stack.create_user(
            f"door-{role}-{suffix}", PASSWORD, can_edit=can_edit, is_admin=is_admin
        )
        tokens[role] = codec.issue(TokenKind.ACCESS, identity(user))[0]
    return tokens


@pytest.fixture(scope="module")
def stored(stack, people) -> dict[str, str]:
    """An instance an editor uploaded through nginx: its Orthanc id and its study's."""
    with stack.http() as http:
        answer = http.post(
            f"{stack.base_url}/zhiva/instances",
            data=Path(sample_file()).read_bytes(),
            headers={"token": people["editor"]},
            timeout=30,
        )
    assert answer.status_code == 200, answer.text
    return {"instance": answer.json()["ID"], "study": answer.json()["ParentStudy"]}


def _through_nginx(stack, method, target, token, headers=None) -> int:
    context = ssl.create_default_context(cafile=stack.ca_file)
    port = int(stack.env["HTTPS_PORT"])
    return send(port, method, "/zhiva" + target, {**(headers or {}), "token": token}, context)


def _on_orthanc_port(stack, method, target, token, headers=None) -> int:
    port = int(stack.env["ORTHANC_HTTP_PORT"])
    return send(port, method, target, {**(headers or {}), "token": token})


DOORS = [
    pytest.param(_through_nginx, 400, id="nginx"),
    pytest.param(_on_orthanc_port, 403, id="orthanc-port"),
]
OVERRIDE = {"X-HTTP-Method-Override": "DELETE"}


@pytest.mark.stack
@pytest.mark.parametrize(("door", "refused"), DOORS)
@pytest.mark.parametrize(
    ("level", "query", "headers"),
    [
        ("instance", "", OVERRIDE),
        ("study", "", OVERRIDE),
        ("instance", "_method=DELETE", {}),
        ("study", "_method=delete", {}),
        ("instance", "%5Fmethod=DELETE", {}),
    ],
)
def test_a_viewer_cannot_delete_through_a_method_override(
    stack, people, stored, door, refused, level, query, headers
):
    path = f"/{level}s/{stored[level]}" if level == "instance" else f"/studies/{stored['study']}"
    status = door(stack, "GET", _target(path, query), people["viewer"], headers)
    if door is _on_orthanc_port and query.startswith("%5F"):
        assert status == 200  # Orthanc reads argument names undecoded: a plain read to it
    else:
        assert status == refused
    # Twin: the same read without the override is granted, and the data is still there.
    assert door(stack, "GET", path, people["viewer"]) == 200


@pytest.mark.stack
@pytest.mark.parametrize(("door", "refused"), DOORS)
@pytest.mark.parametrize(
    ("method", "path", "role", "twin_role"),
    [
        ("PUT", "/tools/log-level", "editor", "admin"),
        ("PUT", "/modalities/EVIL", "viewer", "admin"),
        ("DELETE", "/changes", "viewer", "admin"),
    ],
)
def test_an_override_changes_nothing_a_token_may_not_change(
    stack, people, door, refused, method, path, role, twin_role
):
    headers = {"X-HTTP-Method-Override": method}
    assert door(stack, "GET", path, people[role], headers) in (refused, 403)
    # Twin: the read itself, by whoever may read that route.
    reader = people[twin_role] if path.startswith("/modalities") else people[role]
    assert door(stack, "GET", "/modalities" if "modalities" in path else path, reader) in (
        200,
        404,
    )
    with stack.http() as http:
        modalities = http.get(
            f"{stack.base_url}/zhiva/modalities", headers={"token": people["admin"]}, timeout=10
        ).json()
    assert "EVIL" not in modalities


@pytest.mark.stack
@pytest.mark.parametrize("door", [_through_nginx, _on_orthanc_port])
@pytest.mark.parametrize(
    "spelling", ["/modalities.", "/modalities..", "/modalities%2e", "/peers.", "/modalities./"]
)
def test_admin_reads_are_refused_to_a_viewer_however_spelled(stack, people, door, spelling):
    assert door(stack, "GET", spelling, people["viewer"]) == 403
    # Twin: an admin reads the same spelling.
    assert door(stack, "GET", spelling, people["admin"]) == 200


@pytest.mark.stack
@pytest.mark.parametrize("door", [_through_nginx, _on_orthanc_port])
@pytest.mark.parametrize(
    "spelling", ["/tools/execute-script.", "/tools/execute-script%2e", "/tools./execute-script"]
)
def test_code_routes_are_refused_to_an_admin_however_spelled(stack, people, door, spelling):
    assert door(stack, "POST", spelling, people["admin"]) == 403
    # Twin: the admin's other POSTs pass the checks (Orthanc itself answers).
    assert door(stack, "POST", "/tools/find", people["admin"]) not in (401, 403)


@pytest.mark.stack
def test_the_audit_line_names_what_orthanc_ran(stack, people, stored):
    study = stored["study"]
    assert _through_nginx(stack, "GET", f"/studies/{study}.", people["viewer"]) == 200
    lines = [json.loads(line) for line in stack.audit_log().splitlines()]
    spelled = [line for line in lines if line.get("spelled") == f"/studies/{study}."]
    assert spelled, "no audit line for the spelling"
    assert spelled[-1]["path"] == f"/studies/{study}"
    assert spelled[-1]["method"] == "GET"
    # At Orthanc's own port the plugin asks with what Orthanc is about to run.
    status = _on_orthanc_port(
        stack, "GET", f"/instances/{stored['instance']}", people["viewer"], OVERRIDE
    )
    assert status == 403
    assert _on_orthanc_port(stack, "GET", f"/studies/{study}..", people["viewer"]) == 200
    lines = [json.loads(line) for line in stack.audit_log().splitlines()]
    webhook = [line for line in lines if line["via"] == "webhook"]
    assert any(line["path"] == f"/studies/{study}" for line in webhook)
    assert not any(line["path"].endswith(".") for line in webhook)


@pytest.mark.stack
@pytest.mark.e2e
@pytest.mark.parametrize(
    "path", ["/auth/generate-token", "/auth/sign-user", "/auth/token", "/auth/refresh-token"]
)
def test_auth_bodies_over_the_services_limit_are_refused_before_they_are_read(stack, path):
    """nginx answers 413 from the announced length alone: nothing is written to its disk."""
    context = ssl.create_default_context(cafile=stack.ca_file)
    connection = http.client.HTTPSConnection(
        "localhost", int(stack.env["HTTPS_PORT"]), context=context, timeout=10
    )
    try:
        connection.putrequest("POST", path)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(900 * 1024 * 1024))
        connection.endheaders()
        connection.send(b"{" * 1024)
        answer = connection.getresponse()
        assert answer.status == 413
        assert json.loads(answer.read())["message"]
    finally:
        connection.close()
    # Twin: a body within the limit reaches the service, which answers for itself.
    with stack.http() as session:
        small = session.post(stack.base_url + path, json={"x": "y" * 1000}, timeout=10)
    assert small.status_code not in (413, 500)


# --- the plugin without the policy's rules ----------------------------------------------


class OrthancWithoutRules(OrthancServer):
    """Our plugin, told to import the shared rules from a directory that has none."""

    ready_status = 403

    def configuration(self) -> dict[str, Any]:
        config = super().configuration()
        config["ZhivaAuthorization"]["PythonPath"] = str(self.directory)
        return config


def test_a_plugin_without_the_rules_says_so_and_denies_everything(tmp_path):
    orthanc = OrthancWithoutRules(tmp_path / "orthanc", webhook_url="http://127.0.0.1:9/webhook")
    orthanc.start()
    try:
        for path in ("/app/explorer.html", "/system", "/studies", "/plugins/explorer.js"):
            assert requests.get(orthanc.url + path, timeout=10).status_code == 403
        assert "cannot load the policy's rules" in orthanc.log_text()
        assert "denying every request" in orthanc.log_text()
    finally:
        orthanc.stop()


def test_a_plugin_with_the_rules_serves_explorer(tmp_path):
    """Twin: the same Orthanc with the table where it belongs."""
    orthanc = OrthancServer(tmp_path / "orthanc", webhook_url="http://127.0.0.1:9/webhook")
    orthanc.start()
    try:
        assert requests.get(orthanc.url + "/app/explorer.html", timeout=10).status_code == 200
        assert requests.get(orthanc.url + "/system", timeout=10).status_code == 403
        assert "cannot load the policy's rules" not in orthanc.log_text()
    finally:
        orthanc.stop()


@pytest.mark.stack
def test_uploads_to_orthanc_are_not_held_to_the_auth_limit(stack, people):
    """Twin of the row above: /zhiva/ keeps its own limit, its check's subrequest included."""
    body = Path(sample_file("MR_small.dcm")).read_bytes() + b"\0" * (512 * 1024)
    assert len(body) > 64 * 1024
    with stack.http() as http:
        answer = http.post(
            f"{stack.base_url}/zhiva/instances",
            data=body,
            headers={"token": people["editor"]},
            timeout=60,
        )
    # Orthanc reads it (a DICOM file with trailing padding is still one instance).
    assert answer.status_code == 200, answer.text
