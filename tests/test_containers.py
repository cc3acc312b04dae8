"""docker-compose.yml booted for real (`make test-containers`: Podman here, Docker elsewhere).

These run only with `--stack=containers`; the end-to-end tests marked `e2e`
run against the same container stack as well. What is checked here is what
only containers have: published ports, read-only secrets, the named volume,
health checks and restart policies, a clean stop of Orthanc, and the user
commands (`make status/logs/admin/down/up`) in container mode.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from infra.containers import SERVICES, find_engine, native_versions, wait_ready
from infra.render import COMPOSE_FILE
from services.settings import PROJECT_DIR
from tests.support.dicomweb import access_token, dicomweb, wheel_dataset
from tests.support.processes import free_port, wait_until
from tests.support.stack import ContainerStack

pytestmark = [pytest.mark.stack, pytest.mark.containers]


def _inspect(stack: ContainerStack, service: str) -> dict[str, Any]:
    return json.loads(stack.engine("inspect", stack.container(service)).stdout)[0]


def _study_count(stack: ContainerStack, token: str, study_uid: str) -> int:
    client = dicomweb(stack, token)
    return len(client.search_for_studies(search_filters={"StudyInstanceUID": study_uid}))


def _healthy(stack: ContainerStack, service: str) -> bool:
    status = stack.make("status").stdout.splitlines()
    return any(line.split()[0] == service and "(running, healthy)" in line for line in status)


def test_make_status_shows_every_container_up_and_healthy(stack: ContainerStack):
    lines = stack.make("status").stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(SERVICES)
    for line in lines:
        assert line.split()[1] == "up", line
        assert "(running, healthy)" in line, line


def test_every_container_restarts_unless_stopped_and_has_a_health_check(stack: ContainerStack):
    for service in SERVICES:
        config = _inspect(stack, service)
        assert config["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped", service
        assert config["Config"].get("Healthcheck", {}).get("Test"), service


def test_only_the_https_and_dicom_ports_are_published(stack: ContainerStack):
    published = {
        word
        for service in ("network", *SERVICES)
        for word in stack.engine("port", stack.container(service)).stdout.split()
        if ":" in word  # `8443/tcp -> 127.0.0.1:8443`: the host side
    }
    assert published == {
        f"127.0.0.1:{stack.env['HTTPS_PORT']}",
        f"0.0.0.0:{stack.env['DICOM_PORT']}",
    }


def test_secrets_are_mounted_read_only_and_data_lives_in_a_named_volume(stack: ContainerStack):
    container = stack.container("token")
    assert stack.engine("exec", container, "test", "-r", "/config/.env").returncode == 0
    write = stack.engine("exec", container, "sh", "-c", "echo x >> /config/.env", check=False)
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr
    mounts = {mount["Destination"]: mount for mount in _inspect(stack, "orthanc")["Mounts"]}
    assert mounts["/state"]["Type"] == "volume"
    assert mounts["/state"]["Name"] == f"{stack.env['COMPOSE_PROJECT_NAME']}_state"
    assert mounts["/config"]["RW"] is False


def test_make_admin_and_make_logs_reach_the_containers(stack: ContainerStack):
    username = f"listed-{uuid.uuid4().hex[:6]}"
    stack.create_user(username, "Listed-Passw0rd!", name="Listed User")
    listing = stack.make("admin", ARGS="list-users").stdout
    listed = [line for line in listing.splitlines() if line.split()[:1] == [username]]
    assert listed and "Listed User" in listed[0]
    logs = stack.make("logs").stdout
    for service in SERVICES:
        assert f"==> {service} <==" in logs


def test_orthanc_stops_cleanly_and_comes_back_with_its_data(stack: ContainerStack):
    editor = access_token(stack, can_edit=True)
    dataset = wheel_dataset("CT_small.dcm")
    dicomweb(stack, editor).store_instances([dataset])
    orthanc = stack.container("orthanc")
    stack.engine("stop", "--time", "30", orthanc)
    state = _inspect(stack, "orthanc")["State"]
    assert state["ExitCode"] == 0, state
    logs = stack.engine("logs", "--tail", "5", orthanc)
    assert "Orthanc has stopped" in logs.stdout + logs.stderr
    stack.engine("start", orthanc)
    wait_until(lambda: _healthy(stack, "orthanc"), 60, "Orthanc healthy again")
    assert _study_count(stack, editor, dataset.StudyInstanceUID) == 1


def test_make_down_and_up_keep_users_and_studies_in_the_volume(stack: ContainerStack):
    editor = access_token(stack, can_edit=True)
    dataset = wheel_dataset("CT_small.dcm")
    dicomweb(stack, editor).store_instances([dataset])
    stack.close_clients()
    assert "the data volume stays" in stack.make("down").stdout
    project = f"label=com.docker.compose.project={stack.env['COMPOSE_PROJECT_NAME']}"
    assert stack.engine("ps", "-a", "--filter", project, "--format", "{{.ID}}").stdout.split() == []
    started = stack.up().stdout
    assert "container mode: " in started
    for service in SERVICES:
        assert f"waiting for {service:8} ready" in started, service
    assert f"the volume {stack.env['COMPOSE_PROJECT_NAME']}_state" in started
    assert f"https://localhost:{stack.env['HTTPS_PORT']}/auth/token" in started
    # The same token still works: the user, its key and its study came back from the volume.
    assert _study_count(stack, editor, dataset.StudyInstanceUID) == 1


def test_images_hold_no_secrets_or_state(stack: ContainerStack):
    """.dockerignore keeps `.env`, keys, certificates and the host's var/ out of the images."""
    for service in ("token", "orthanc"):
        found = stack.engine(
            "exec",
            stack.container(service),
            "find",
            "/app",
            "-maxdepth",
            "3",
            "(",
            "-name",
            ".env",
            "-o",
            "-name",
            "*.pem",
            "-o",
            "-name",
            "*.key",
            "-o",
            "-name",
            "*.crt",
            "-o",
            "-name",
            "var",
            ")",
        ).stdout.split()
        assert found == [], (service, found)


def test_services_run_the_python_packages_the_native_stack_runs(stack: ContainerStack):
    native = {
        line.split("==")[0].lower(): line for line in native_versions().splitlines() if "==" in line
    }
    frozen = stack.engine(
        "exec", stack.container("token"), "/app/.venv/bin/pip", "freeze", "--exclude-editable"
    ).stdout.splitlines()
    inside = {line.split("==")[0].lower(): line for line in frozen if "==" in line}
    for package in ("flask", "joserfc", "sqlalchemy", "gunicorn", "redis", "bcrypt", "alembic"):
        assert inside[package] == native[package], package


def test_compose_alone_sets_up_an_empty_config_dir_and_serves(
    stack: ContainerStack, tmp_path: Path
):
    """The README's path without make: `compose up -d` with only ADMIN_PASSWORD given."""
    engine = find_engine()
    assert engine is not None
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    project = f"zhiva-bare-{uuid.uuid4().hex[:6]}"
    https_port = free_port()
    environment = {
        **{k: v for k, v in os.environ.items() if k not in ("STATE_DIR", "DATABASE_URL")},
        "CONFIG_DIR": str(config_dir),
        "HTTPS_PORT": str(https_port),
        "DICOM_PORT": str(free_port()),
        "ADMIN_PASSWORD": stack.admin_password,
    }

    def compose(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*engine.compose, "-p", project, "-f", str(COMPOSE_FILE), *arguments],
            cwd=PROJECT_DIR,
            env=environment,
            capture_output=True,
            text=True,
            timeout=600,
        )

    try:
        started = compose("up", "-d")
        assert started.returncode == 0, started.stderr
        wait_ready(engine, project)
        # The set-up container made the certificate, the keys and `.env` here.
        for made in ("zhiva.crt", "trusted.crt", "jwt_priv.pem", "jwt_pub.pem", ".env"):
            assert (config_dir / made).exists(), made
        assert "ADMIN_PASSWORD_HASH=" in (config_dir / ".env").read_text()
        tls = ssl.create_default_context(cafile=str(config_dir / "trusted.crt"))
        url = f"https://localhost:{https_port}/auth/healthz/token"
        with urllib.request.urlopen(url, context=tls, timeout=10) as answer:  # noqa: S310
            assert json.load(answer)["status"] == "ok"
    finally:
        compose("down", "-v")
