"""Start a program after ending what a killed earlier instance left behind.

nginx's workers outlive a master killed with SIGKILL (the OOM killer, `kill -9`):
they keep the listening sockets and go on serving the old configuration and
certificate beside the workers of the master supervisord starts next, and they
keep the HTTPS port after `make down`. supervisord starts every program in a
process group of its own, so those orphans are the process group whose id is
the old master's pid, the one in its pid file.

    python -m infra.reap --name nginx PIDFILE COMMAND ARGS…

ends that group's processes whose command line starts with NAME (a pid reused
by something else is left alone): SIGQUIT (nginx's graceful stop), SIGKILL
after a few seconds, then replaces itself with COMMAND, so supervisord watches
the program itself.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

GRACE_SECONDS = 5.0


def group_members(pgid: int, name: str) -> list[int]:
    """Live processes of process group `pgid` whose command line starts with `name`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        # `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid and command.startswith(name):
            members.append(int(entry.name))
    return members


def end_group(pgid: int, name: str, grace: float = GRACE_SECONDS) -> list[int]:
    """End what is left of process group `pgid`; returns the pids that were found."""
    found = group_members(pgid, name)
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        for pid in group_members(pgid, name):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while group_members(pgid, name) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not group_members(pgid, name):
            break
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.reap", description=__doc__)
    parser.add_argument("--name", required=True, help="command-line prefix of the orphans")
    parser.add_argument("pidfile", type=Path)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    arguments = parser.parse_args(argv)
    if not arguments.command:
        parser.error("no command to start")
    try:
        old = int(arguments.pidfile.read_text().strip())
    except (OSError, ValueError):
        old = 0
    if old > 1 and old != os.getpgrp():
        ended = end_group(old, arguments.name)
        if ended:
            print(
                f"reap: ended {len(ended)} process(es) left by a killed {arguments.name} "
                f"(process group {old}): {' '.join(map(str, ended))}",
                file=sys.stderr,
                flush=True,
            )
    os.execvp(arguments.command[0], arguments.command)  # noqa: S606 - argv, no shell
    return 127  # not reached: exec replaces this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
