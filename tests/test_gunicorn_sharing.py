"""The services' gunicorn settings keep the master's heap shared with its workers.

A service of several workers (the policy's) has its app loaded in the master and the
workers forked from it. A worker's full garbage collection writes into every object it
walks; without the settings' `pre_fork` freeze, the first one in a worker of the
preloaded token service unshared 22 MB of the master's pages (docs/BENCHMARKS.md,
design table). This runs the deployment's own gunicorn settings and options for two
workers on a small app with a 20 MB heap, makes a worker collect, and reads from /proc
how much of that heap it copied. A service of one worker is not preloaded; the last
test checks that its master holds none of the app.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from infra.render import gunicorn_workers
from tests.support.processes import GUNICORN_SETTINGS, free_port, start_gunicorn, wait_until

MB = 1024 * 1024


def private_dirty_bytes(pid: int) -> int:
    """The pages only this process maps and has written (copied on write after the fork)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no Private_Dirty in /proc/{pid}/smaps_rollup")


def rss_anon_bytes(pid: int) -> int:
    """The process's anonymous resident memory: its heap, shared or not."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no RssAnon in /proc/{pid}/status")


@contextmanager
def gunicorn(settings: Path, log: Path, workers: int) -> Iterator[tuple[str, int, list[int]]]:
    """gunicorn with these settings and the deployment's options for `workers` workers
    (infra/render.py): the base URL, the master's pid and the workers' pids."""
    port = free_port()
    env = {**os.environ, "GUNICORN_BIND": f"127.0.0.1:{port}"}
    with log.open("wb") as output:
        master = start_gunicorn(
            "tests.support.collector_app:app",
            env=env,
            log=output,
            settings=settings,
            options=gunicorn_workers(workers),
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: requests.get(base, timeout=2).ok, 30, f"gunicorn ({log})")
            children_file = Path(f"/proc/{master.pid}/task/{master.pid}/children")
            wait_until(lambda: len(children_file.read_text().split()) == workers, 30, "the workers")
            yield base, master.pid, [int(pid) for pid in children_file.read_text().split()]
        finally:
            master.terminate()
            master.wait(15)


def copied_by_a_collection(settings: Path, log: Path) -> int:
    """Bytes of the master's heap a worker copies when it runs a full collection."""
    with gunicorn(settings, log, workers=2) as (base, _master, workers):
        # One connection, kept alive: the same worker serves every request.
        with requests.Session() as http:
            assert http.get(base, timeout=5).ok  # the worker's first request is behind it
            before = {pid: private_dirty_bytes(pid) for pid in workers}
            assert http.get(f"{base}/collect", timeout=30).ok
            return max(private_dirty_bytes(pid) - before[pid] for pid in workers)


def test_a_full_collection_in_a_worker_keeps_the_master_heap_shared(tmp_path):
    assert copied_by_a_collection(GUNICORN_SETTINGS, tmp_path / "frozen.log") < 4 * MB


def test_without_the_freeze_the_same_collection_copies_the_heap(tmp_path):
    # The control: the same settings with `pre_fork` doing nothing. It shows that the
    # measurement above sees the copying it guards against.
    unfrozen = tmp_path / "unfrozen.conf.py"
    without_freeze = "\n\ndef pre_fork(server, worker):\n    pass\n"
    unfrozen.write_text(GUNICORN_SETTINGS.read_text() + without_freeze, encoding="utf-8")
    assert copied_by_a_collection(unfrozen, tmp_path / "unfrozen.log") > 12 * MB


def test_a_single_worker_is_not_forked_from_a_master_holding_the_app(tmp_path):
    # With one worker, the worker's own writes would unshare the master's copy of the app
    # page by page, until both held it. The master holds gunicorn alone instead.
    with gunicorn(GUNICORN_SETTINGS, tmp_path / "single.log", workers=1) as (_, master, [worker]):
        heap = 20 * MB  # the collector app's
        assert rss_anon_bytes(worker) > heap
        assert rss_anon_bytes(master) < rss_anon_bytes(worker) - heap
