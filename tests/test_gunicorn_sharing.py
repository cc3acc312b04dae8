"""The services' gunicorn settings keep the master's heap shared with its workers.

A worker's full garbage collection writes into every object it walks; without the
settings' `pre_fork` freeze, the first one in a token service worker unshared 22 MB
of the master's pages (docs/BENCHMARKS.md, design table). This runs the deployment's
own gunicorn settings on a small app with a 20 MB heap, makes its worker collect, and
reads from /proc how much of that heap the worker copied.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.support.processes import GUNICORN_SETTINGS, free_port, start_gunicorn, wait_until

MB = 1024 * 1024


def private_dirty_bytes(pid: int) -> int:
    """The pages only this process maps and has written (copied on write after the fork)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no Private_Dirty in /proc/{pid}/smaps_rollup")


@contextmanager
def gunicorn(settings: Path, log: Path) -> Iterator[tuple[str, int]]:
    """gunicorn with these settings and one worker: the base URL and the worker's pid."""
    port = free_port()
    env = {**os.environ, "GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": "1"}
    with log.open("wb") as output:
        master = start_gunicorn(
            "tests.support.collector_app:app", env=env, log=output, settings=settings
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: requests.get(base, timeout=2).ok, 30, f"gunicorn ({log})")
            children = Path(f"/proc/{master.pid}/task/{master.pid}/children").read_text().split()
            assert len(children) == 1, children
            yield base, int(children[0])
        finally:
            master.terminate()
            master.wait(15)


def copied_by_a_collection(settings: Path, log: Path) -> int:
    """Bytes of the master's heap the worker copies when it runs a full collection."""
    with gunicorn(settings, log) as (base, worker):
        with requests.Session() as http:
            assert http.get(base, timeout=5).ok  # the worker's first request is behind it
            before = private_dirty_bytes(worker)
            assert http.get(f"{base}/collect", timeout=30).ok
            return private_dirty_bytes(worker) - before


def test_a_full_collection_in_a_worker_keeps_the_master_heap_shared(tmp_path):
    assert copied_by_a_collection(GUNICORN_SETTINGS, tmp_path / "frozen.log") < 4 * MB


def test_without_the_freeze_the_same_collection_copies_the_heap(tmp_path):
    # The control: the same settings with `pre_fork` doing nothing. It shows that the
    # measurement above sees the copying it guards against.
    unfrozen = tmp_path / "unfrozen.conf.py"
    without_freeze = "\n\ndef pre_fork(server, worker):\n    pass\n"
    unfrozen.write_text(GUNICORN_SETTINGS.read_text() + without_freeze, encoding="utf-8")
    assert copied_by_a_collection(unfrozen, tmp_path / "unfrozen.log") > 12 * MB
