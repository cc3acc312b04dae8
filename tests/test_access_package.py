"""services.access runs in three places: the policy service, the renderer (into nginx.conf)
and Orthanc's own Python, which has the standard library and nothing of the project's
virtualenv. It must stay importable there by its package name."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from services.settings import PROJECT_DIR

# Debian's Python, the one orthanc-python embeds (not this virtualenv's).
SYSTEM_PYTHON = "/usr/bin/python3"
MODULES = ("services.access.paths", "services.access.permissions", "services.access.handoff")

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
before = set(sys.modules)
for name in sys.argv[2:]:
    __import__(name)
import sysconfig  # after the imports, so what it loads does not count against them
stdlib = (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])
foreign = sorted(
    name
    for name, module in sys.modules.items()
    if name not in before
    and not name.startswith("services")
    and getattr(module, "__file__", None)
    and not module.__file__.startswith(stdlib)
)
print(json.dumps(foreign))
"""


def _imports_beyond_the_standard_library(python: str, *modules: str) -> list[str]:
    # -I: no user site, no PYTHONPATH; -S: not even the system's site-packages.
    result = subprocess.run(
        [python, "-I", "-S", "-c", PROBE, str(PROJECT_DIR), *modules],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)


@pytest.mark.parametrize("python", [SYSTEM_PYTHON, sys.executable])
def test_the_shared_package_imports_nothing_but_the_standard_library(python):
    assert _imports_beyond_the_standard_library(python, *MODULES) == []


def test_the_probe_sees_a_module_from_outside_the_standard_library():
    """Twin: the same probe on a module that needs the virtualenv fails to import it."""
    with pytest.raises(subprocess.CalledProcessError):
        _imports_beyond_the_standard_library(SYSTEM_PYTHON, "services.domain.tokens")
