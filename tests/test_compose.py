"""docker-compose.yml: rendered from the native stack's settings, and in step with them.

Here: the committed file is exactly what the templates make and keeps the
promised shape. Booting it for real is tests/test_containers.py and the e2e
tests under `make test-containers`.
"""

from __future__ import annotations

import shlex

import yaml

from infra.render import (
    COMPOSE_FILE,
    CONTAINER_PROJECT_DIR,
    CONTAINER_STATE_DIR,
    programs,
    render_compose,
)
from services.settings import DEFAULTS, load_settings


def test_committed_file_is_what_the_templates_render():
    assert COMPOSE_FILE.read_text() == render_compose(), "run `make compose` and commit"


def test_every_native_program_runs_in_a_container_with_the_same_command():
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    settings = load_settings(
        {**DEFAULTS, "CONFIG_DIR": "/config", "STATE_DIR": CONTAINER_STATE_DIR},
        require_secrets=False,
    )
    for program in programs(settings, CONTAINER_PROJECT_DIR, cores=2):
        assert services[program.name]["command"] == shlex.split(program.command)
        assert services[program.name]["restart"] == "unless-stopped"
        assert "healthcheck" in services[program.name]


def test_only_https_and_dicom_are_published_and_data_is_in_a_volume():
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    published = {
        name: service["ports"]
        for name, service in document["services"].items()
        if "ports" in service
    }
    assert list(published) == ["network"]
    # Published on the same port inside and out (so URLs in tokens are right), each
    # defaulting to the settings' default: "${BIND_ADDRESS:-…}:${HTTPS_PORT:-8443}:${…}".
    https = "${HTTPS_PORT:-" + DEFAULTS["HTTPS_PORT"] + "}"
    dicom = "${DICOM_PORT:-" + DEFAULTS["DICOM_PORT"] + "}"
    assert published["network"] == [
        f"${{BIND_ADDRESS:-127.0.0.1}}:{https}:{https}",
        f"${{DICOM_BIND_ADDRESS:-0.0.0.0}}:{dicom}:{dicom}",
    ]
    assert "state" in document["volumes"]
    for name in ("redis", "orthanc", "nginx", "policy", "token", "login"):
        service = document["services"][name]
        assert service["network_mode"] == "service:network"
        # Secrets (`.env`, keys) are mounted read-only everywhere but in the set-up.
        assert "${CONFIG_DIR:-.}:/config:ro" in service["volumes"]
        assert "state:/state" in service["volumes"]
