"""The stack as `make up` runs it: every component reached through nginx over TLS."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from infra.reap import group_members
from services.domain.tokens import TokenCodec, TokenKind
from services.settings import PROJECT_DIR
from services.stores.accounts import identity
from tests.conftest import ADMIN_PASSWORD
from tests.support.dicom import c_echo, c_store, register, sample_file, tls_context
from tests.support.dicomweb import SyntheticInstance, access_token, bearer_session
from tests.support.processes import wait_until
from tests.support.stack import Stack

pytestmark = pytest.mark.stack

STACK_PROGRAMS = ("redis", "orthanc", "policy", "token", "login", "nginx")


@pytest.mark.e2e
def test_admin_page_through_nginx(stack):
    response = stack.http().get(f"{stack.base_url}/auth/token")
    assert response.status_code == 200
    assert "text/html" in response.headers["Content-Type"]


@pytest.mark.e2e
def test_orthanc_explorer_static_page_needs_no_token(stack):
    response = stack.http().get(f"{stack.base_url}/zhiva/app/explorer.html")
    assert response.status_code == 200
    assert "Orthanc" in response.text


@pytest.mark.parametrize("path", ["/zhiva/pacs/studies", "/zhiva/studies", "/zhiva/system"])
@pytest.mark.e2e
def test_orthanc_without_a_token_is_refused(stack, path):
    response = stack.http().get(f"{stack.base_url}{path}")
    assert response.status_code == 401


def test_orthanc_port_without_a_token_is_refused(stack):
    assert requests.get(f"{stack.orthanc_url}/studies", timeout=5).status_code in (401, 403)


@pytest.mark.parametrize("service", ["token", "login", "policy"])
@pytest.mark.e2e
def test_each_service_health_through_its_route(stack, service):
    response = stack.http().get(f"{stack.base_url}/auth/healthz/{service}")
    assert response.status_code == 200
    assert response.json()["service"] == service
    assert response.json()["checks"] == {"redis": True, "database": True}


@pytest.mark.e2e
def test_unknown_paths_are_404(stack):
    assert stack.http().get(f"{stack.base_url}/nothing-here").status_code == 404


@pytest.mark.e2e
def test_cors_echoes_allowed_origins_only(stack):
    http = stack.http()
    allowed = http.options(
        f"{stack.base_url}/zhiva/pacs/studies", headers={"Origin": "https://viewer.zhiva.ai"}
    )
    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://viewer.zhiva.ai"
    foreign = http.options(
        f"{stack.base_url}/zhiva/pacs/studies", headers={"Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in foreign.headers


@pytest.mark.e2e
def test_tls_only_with_the_generated_certificate(stack):
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{stack.base_url}/auth/token", timeout=5)  # system CAs do not know it
    plain = requests.get(
        f"http://localhost:{stack.env['HTTPS_PORT']}/auth/token", timeout=5, allow_redirects=False
    )
    assert plain.status_code == 301
    assert plain.headers["Location"].startswith("https://")


def test_make_status_lists_every_component_up(stack):
    output = stack.make("status").stdout
    for program in STACK_PROGRAMS:
        line = next(line for line in output.splitlines() if line.startswith(program))
        assert line.split()[1] == "up", output


def test_make_logs_shows_where_and_tails(stack):
    output = stack.make("logs").stdout
    assert str(stack.layout.log_dir) in output
    assert "nginx-access.log" in output


def test_no_secret_or_token_in_logs(stack):
    http = stack.http()
    http.get(f"{stack.base_url}/zhiva/pacs/studies?token=secret-token-value")
    time.sleep(0.5)
    settings = stack.settings
    for log in stack.layout.log_dir.glob("*.log"):
        text = log.read_text(errors="replace")
        assert "secret-token-value" not in text, log
        assert settings.redis_password not in text, log
        assert ADMIN_PASSWORD not in text, log


def test_a_slow_download_keeps_its_query_token_out_of_the_logs(stack):
    """Orthanc Explorer puts the token in the address of what it downloads. nginx buffered an
    answer a client read slower than Orthanc sent it to a temporary file, and said so in its
    error log with the request line: the token in the log."""
    viewer = access_token(stack)
    instance = SyntheticInstance(1024, 1024, 4)  # 8 MiB
    upload = bearer_session(stack, access_token(stack, can_edit=True)).post(
        f"{stack.base_url}/zhiva/instances",
        data=b"".join(instance.chunks()),
        headers={"Content-Type": "application/dicom"},
        timeout=60,
    )
    assert upload.status_code == 200, upload.text
    request = (
        f"GET /zhiva/instances/{upload.json()['ID']}/file?token={viewer} HTTP/1.1\r\n"
        "Host: localhost\r\nConnection: close\r\n\r\n"
    )
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow link's small window
    raw.connect(("127.0.0.1", int(stack.env["HTTPS_PORT"])))
    with tls_context(stack.ca_file).wrap_socket(raw, server_hostname="localhost") as client:
        client.sendall(request.encode())
        time.sleep(2)  # Orthanc has sent what nginx would hold by now; the client reads none
        answer = bytearray()
        while chunk := client.recv(1 << 16):
            answer += chunk
    head, _, body = bytes(answer).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and len(body) == len(instance)
    for log in stack.layout.log_dir.glob("*.log"):
        assert viewer not in log.read_text(errors="replace"), log


def _main_pid(stack: Stack, program: str) -> int:
    return int(stack.supervisorctl("pid", program).stdout.strip())


@pytest.mark.parametrize("program", ["token", "policy", "nginx"])
def test_a_killed_process_is_brought_back(stack, program):
    old_pid = _main_pid(stack, program)
    os.kill(old_pid, signal.SIGKILL)
    wait_until(lambda: _main_pid(stack, program) not in (0, old_pid), 30, f"{program} restart")
    # Nothing of the killed one goes on serving: nginx's workers outlive their master
    # (infra/reap.py ends them), gunicorn's notice theirs is gone and leave.
    name = "nginx" if program == "nginx" else ""
    wait_until(lambda: group_members(old_pid, name) == [], 30, f"{program}'s orphans gone")
    health = f"{stack.base_url}/auth/healthz/{'token' if program == 'nginx' else program}"
    wait_until(lambda: stack.http().get(health, timeout=3).status_code == 200, 30, "health again")


@pytest.mark.e2e
def test_dicom_tls_echo_and_plain_association_refused(stack):
    port = int(stack.env["DICOM_PORT"])
    assert c_echo(port, stack.ca_file)
    assert not c_echo(port, None)


def _stack_processes(stack: Stack) -> list[str]:
    """Command lines of live processes that belong to this stack (its STATE_DIR or ports)."""
    marks = (stack.env["STATE_DIR"], f"127.0.0.1:{stack.env['TOKEN_SERVICE_PORT']}")
    found = []
    for proc in os.listdir("/proc"):
        if not proc.isdigit():
            continue
        try:
            with open(f"/proc/{proc}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(mark in command for mark in marks):
            found.append(command)
    return found


def test_down_stops_everything_and_up_keeps_keys_users_and_studies(tmp_path, output_dir):
    own = Stack.prepare(tmp_path, ADMIN_PASSWORD, output_dir)
    own.up()
    try:
        http = own.http()
        kid = http.get(f"{own.base_url}/auth/.well-known/jwks.json").json()["keys"][0]["kid"]
        user = own.create_user("keeper", "Keeper-Passw0rd!", is_admin=True, can_edit=True)
        register(own, "TESTSCU")  # stores come from registered modalities only
        assert c_store(int(own.env["DICOM_PORT"]), own.ca_file, sample_file()) == 0
        codec = TokenCodec.from_settings(own.settings, can_sign=True)
        token, _ = codec.issue(TokenKind.ACCESS, identity(user))
        headers = {"Authorization": f"Bearer {token}"}
        studies = http.get(f"{own.base_url}/zhiva/studies", headers=headers)
        assert studies.status_code == 200 and len(studies.json()) == 1

        down = own.down()
        assert "stopped" in down.stdout
        assert _stack_processes(own) == []
        assert "down" in own.make("status").stdout

        own.up()
        http = own.http()
        assert (
            http.get(f"{own.base_url}/auth/.well-known/jwks.json").json()["keys"][0]["kid"] == kid
        )
        # The same user, the same key: the token issued before the restart still works.
        after = http.get(f"{own.base_url}/zhiva/studies", headers=headers)
        assert after.status_code == 200 and after.json() == studies.json()
        again = own.up()  # idempotent: a second `make up` on a running stack changes nothing
        assert "already running" in again.stdout
    finally:
        own.down()
    assert _stack_processes(own) == []


@pytest.mark.parametrize("password", ["password", "", "Short1!"])
def test_setup_refuses_a_weak_admin_password_and_writes_nothing(tmp_path, output_dir, password):
    weak = Stack.prepare(tmp_path, password, output_dir)
    with pytest.raises(RuntimeError, match="admin password is (too weak|empty)"):
        weak.make("setup")
    config = Path(weak.env["CONFIG_DIR"])
    assert not config.exists() or not any(config.iterdir())


def test_status_describes_the_running_stack_without_its_knobs(stack):
    """`make status` run without HTTPS_PORT/DICOM_PORT still names the ports `make up` used."""
    bare = {k: v for k, v in stack.env.items() if k not in ("HTTPS_PORT", "DICOM_PORT")}
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(PROJECT_DIR), "status"],
        env=bare,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    nginx = next(line for line in result.stdout.splitlines() if line.startswith("nginx"))
    assert f":{stack.env['HTTPS_PORT']}" in nginx
    assert f"DICOM TLS port {stack.env['DICOM_PORT']}" in result.stdout
