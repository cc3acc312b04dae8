"""The policy's gunicorn worker subclasses uvicorn internals (services/policy_service/asgi.py):
pinned in pyproject.toml, and checked here so an upgrade that moves them fails loudly."""

from __future__ import annotations

import inspect
from importlib.metadata import version

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from infra.render import WORKER_CLASSES, programs
from services.policy_service.asgi import CoalescingProtocol, PolicyWorker
from services.settings import load_settings


def _release(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version(name).split(".")[:2])


def test_uvicorn_is_the_release_range_the_worker_was_tested_with():
    assert (0, 55) <= _release("uvicorn") < (0, 56), "re-test CoalescingProtocol, then re-pin"
    assert (0, 4) <= _release("uvicorn-worker") < (0, 5), "re-test PolicyWorker, then re-pin"


def test_the_uvicorn_internals_the_coalescing_protocol_overrides_are_there():
    # It wraps the transport handed to connection_made and flushes it when a response
    # is complete: both must still be the protocol's own hooks, with these parameters.
    made = inspect.signature(HttpToolsProtocol.connection_made)
    assert list(made.parameters) == ["self", "transport"]
    complete = inspect.signature(HttpToolsProtocol.on_response_complete)
    assert list(complete.parameters) == ["self"]
    # ...and the protocol writes through `self.transport`, which the wrapper replaces.
    source = inspect.getsource(HttpToolsProtocol)
    assert "self.transport.write(" in source
    assert "self.transport = transport" in inspect.getsource(HttpToolsProtocol.connection_made)
    assert issubclass(CoalescingProtocol, HttpToolsProtocol)
    assert PolicyWorker.CONFIG_KWARGS["http"] is CoalescingProtocol


def test_the_renderer_names_each_services_worker_class(tmp_path):
    settings = load_settings({"STATE_DIR": str(tmp_path)}, require_secrets=False)
    commands = {program.name: program.command for program in programs(settings)}
    assert f"--worker-class {WORKER_CLASSES['policy']}" in commands["policy"]
    assert WORKER_CLASSES["policy"] == f"{PolicyWorker.__module__}.{PolicyWorker.__name__}"
    for service in ("token", "login"):
        assert "--worker-class gthread" in commands[service]
