"""infra/reap.py: what a killed master left behind is ended before the program starts again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.reap import group_members
from services.settings import PROJECT_DIR
from tests.support.processes import wait_until


@pytest.fixture
def orphaned_group(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A process group whose leader was SIGKILLed: two `sleep`s and one `python3` are left."""
    other = "/usr/bin/python3 -c 'import time; time.sleep(300)'"
    leader = subprocess.Popen(
        ["sh", "-c", f"sleep 300 & sleep 300 & {other} & echo started; wait"],
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert leader.stdout is not None
    assert leader.stdout.readline().strip() == "started"
    leader.stdout.close()
    pidfile = tmp_path / "program.pid"
    pidfile.write_text(f"{leader.pid}\n")
    leader.kill()
    leader.wait()
    wait_until(lambda: len(group_members(leader.pid, "sleep")) == 2, 5, "orphans listed")
    wait_until(lambda: len(group_members(leader.pid, "/usr/bin/python3")) == 1, 5, "other listed")
    try:
        yield leader.pid, pidfile
    finally:
        for pid in group_members(leader.pid, ""):
            os.kill(pid, signal.SIGKILL)


def _reap(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.reap", *arguments],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_orphans_of_the_named_program_are_ended_then_the_command_runs(orphaned_group):
    pgid, pidfile = orphaned_group
    result = _reap("--name", "sleep", str(pidfile), "sh", "-c", "echo running; exit 3")
    assert result.returncode == 3  # the command's own exit status: reap exec'd it
    assert result.stdout == "running\n"
    assert f"ended 2 process(es) left by a killed sleep (process group {pgid})" in result.stderr
    assert group_members(pgid, "sleep") == []
    # Another program in the same group (a pid reused by something else) is left alone.
    assert len(group_members(pgid, "/usr/bin/python3")) == 1


def test_without_a_pid_file_or_orphans_the_command_just_runs(tmp_path: Path):
    result = _reap("--name", "nginx", str(tmp_path / "missing.pid"), "true")
    assert (result.returncode, result.stderr) == (0, "")
    (tmp_path / "stale.pid").write_text("999999999\n")
    result = _reap("--name", "nginx", str(tmp_path / "stale.pid"), "true")
    assert (result.returncode, result.stderr) == (0, "")


def test_no_command_is_a_usage_error(tmp_path: Path):
    result = _reap("--name", "nginx", str(tmp_path / "x.pid"))
    assert result.returncode == 2
    assert "no command to start" in result.stderr
