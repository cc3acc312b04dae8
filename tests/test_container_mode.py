"""Container mode's choices, without an engine: MODE, the mirror, the build's CA certificates."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.containers import (
    DEFAULT_MIRROR,
    DEFAULT_SECURITY_MIRROR,
    MAX_CA_CERTS_BYTES,
    ContainerError,
    build_ca_certs,
    choose_mode,
    compose_environment,
    host_mirrors,
    project_name,
)
from services.settings import load_settings

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(
    "given, mode", [("native", "native"), ("docker", "docker"), (" Docker ", "docker")]
)
def test_mode_given_is_obeyed(given, mode):
    assert choose_mode({"MODE": given}) == mode


def test_unknown_mode_is_refused_with_the_choices():
    with pytest.raises(ContainerError, match="MODE=native or MODE=docker"):
        choose_mode({"MODE": "kubernetes"})


@pytest.mark.parametrize("name", ["Zhiva", "a b", "-x", "x/y", ""])
def test_project_names_compose_would_refuse_are_refused(name):
    if name == "":
        assert project_name({"COMPOSE_PROJECT_NAME": ""}) == "zhiva-pacs"
        return
    with pytest.raises(ContainerError, match="COMPOSE_PROJECT_NAME"):
        project_name({"COMPOSE_PROJECT_NAME": name})


def test_mirrors_from_deb822_sources(tmp_path: Path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment: with a colon\nURIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    assert host_mirrors(tmp_path) == (
        "http://mirror.example/debian",
        "http://mirror.example/debian-security",
    )


def test_mirrors_from_one_line_sources_and_defaults(tmp_path: Path):
    assert host_mirrors(tmp_path) == (DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR)
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://line.example/debian bookworm main\n"
    )
    assert host_mirrors(tmp_path) == ("http://line.example/debian", DEFAULT_SECURITY_MIRROR)


def test_build_ca_certs_are_off_by_default_and_read_from_the_named_file(tmp_path: Path):
    assert build_ca_certs({}) == ""
    bundle = tmp_path / "extra.pem"
    bundle.write_text(PEM)
    assert build_ca_certs({"BUILD_CA_CERTS": str(bundle)}) == PEM


@pytest.mark.parametrize(
    "content, message",
    [(None, "No such file"), ("not a certificate", "no PEM certificate"), ("big", "KiB")],
)
def test_bad_build_ca_certs_are_refused_with_a_reason(tmp_path: Path, content, message):
    path = tmp_path / "ca.pem"
    if content == "big":
        path.write_text(PEM * (MAX_CA_CERTS_BYTES // len(PEM) + 1))
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ContainerError, match=message):
        build_ca_certs({"BUILD_CA_CERTS": str(path)})


def test_compose_gets_the_published_knobs_from_the_settings(config_dir: Path, monkeypatch):
    monkeypatch.setenv("STATE_DIR", "/somewhere/on/the/host")
    settings = load_settings(
        {"CONFIG_DIR": str(config_dir), "HTTPS_PORT": "9443", "PUBLIC_HOST": "pacs.example"}
    )
    environment = compose_environment(settings, "zhiva-x")
    assert environment["CONFIG_DIR"] == str(config_dir)
    assert environment["HTTPS_PORT"] == "9443"
    assert environment["DICOM_PORT"] == str(settings.dicom_port)
    assert environment["PUBLIC_HOST"] == "pacs.example"
    assert environment["COMPOSE_PROJECT_NAME"] == "zhiva-x"
    # The host's STATE_DIR means nothing inside the containers (their state is a volume).
    assert "STATE_DIR" not in environment
