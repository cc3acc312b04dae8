"""The three services' memory, process by process, at start-up and after some work:
`python -m bench.memory` (about a minute; `make bench` measures memory too, in 13).

The work is a minute of the calls a day of use makes, each code path many times: pages
of the token form and the sign-in page, sign-ins, auth tokens exchanged, refreshes. What
it shows is how much a process grows once its code has run: a worker writing into
pages it shares with its gunicorn master copies them (docs/BENCHMARKS.md, design
table). Memory is read from /proc/PID/smaps_rollup 3 s after start-up and after work.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.loads import exchange, process_tree, refresh, sign_in, smaps_rollup
from tests.support.stack import Stack

ADMIN_PASSWORD = "Memory-Admin-Passw0rd!"  # noqa: S105 - a throw-away stack
USER_PASSWORD = "Memory-User-Passw0rd!"  # noqa: S105
SERVICES = ("policy", "token", "login")
FIELDS = ("Rss", "Pss", "Shared_Dirty", "Private_Dirty")


def report(stack: Stack, moment: str) -> float:
    """Print each service process's memory; return the three services' PSS in MB."""
    print(f"{moment}:")
    total = 0.0
    for service in SERVICES:
        master = int(stack.supervisorctl("pid", service).stdout.strip())
        for pid in process_tree(master):
            figures = smaps_rollup(pid)
            total += figures["Pss"]
            role = "master" if pid == master else "worker"
            print(
                f"  {service:6} {role:6} "
                + "  ".join(f"{name} {figures[name]:5.1f}" for name in FIELDS)
            )
    print(f"  three services: {total:.1f} MB PSS")
    return total


def work(stack: Stack, pages: int, calls: int) -> None:
    http, base = stack.http(), stack.base_url
    stack.create_user("memory-viewer", USER_PASSWORD)
    for _ in range(pages):
        for page in ("/auth/token", f"/auth/sign-in?return_uri={base}/"):
            http.get(base + page, timeout=30).raise_for_status()
    refresh_tokens = [
        exchange(http, base, sign_in(http, base, "memory-viewer", USER_PASSWORD))
        for _ in range(calls)
    ]
    for token in refresh_tokens * 10:
        refresh(http, base, token)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=1500, help="rounds of the two pages")
    parser.add_argument("--calls", type=int, default=20, help="sign-ins and token exchanges")
    options = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="zhiva-memory-"))
    stack = Stack.prepare(root / "stack", ADMIN_PASSWORD, root / "output")
    print(f"starting the stack (make up) in {root}")
    stack.up()
    try:
        time.sleep(3)
        before = report(stack, "start-up")
        work(stack, options.pages, options.calls)
        time.sleep(3)
        after = report(stack, f"after {options.pages} rounds of pages, {options.calls} sign-ins")
        print(f"grew {after - before:+.1f} MB")
    finally:
        stack.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
