"""Where the end-to-end gap of a large answer goes: `python -m bench.check_cost` (about
4 minutes with the defaults).

`make bench` compares the stack with the bench's nginx copy without auth_request in front
of an Orthanc without the plugin: two nginx processes and two Orthancs at once. Here the
bench's nginx also serves the stack's own server block twice, to the stack's own Orthanc:
as it is, and without its auth_request. Four paths to one CT slice, run interleaved (each
round starting with the next path):

- *stack*: the stack's nginx, auth_request (cached), Orthanc with the plugin;
- *as stack, bench nginx*: the same server block in the bench's nginx;
- *no check, bench nginx*: that without auth_request (with no grant, nginx sends no handoff
  value, so Orthanc's plugin judges the request itself, from its cached role);
- *no authorization*: the bench's `noauth` server, to the Orthanc without the plugin.

Steps 1 → 2 say whether the stack's nginx process costs more than a copy of it; 2 → 3 are
the cached check less the plugin's own judgement; 3 → 4 the plugin. Besides rates (which
move by tens of per cent on a shared machine), each run's CPU time of the nginx and the
Orthanc serving it, per request.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.loads import cpu_seconds, wrk
from bench.run import E2E_CONNECTIONS, Bench, Knobs


@dataclass
class Route:
    name: str
    base_url: str
    token: str  # sent in the `token` header; empty: none
    nginx_pid: int
    orthanc_pid: int
    rates: list[float] = field(default_factory=list)
    nginx_us: list[float] = field(default_factory=list)
    orthanc_us: list[float] = field(default_factory=list)


def routes_of(bench: Bench) -> list[Route]:
    stack, nginx = bench.stack, bench.nginx
    assert nginx is not None and nginx.nginx.process is not None and bench.bare is not None
    assert bench.bare.process is not None
    pids = bench.pids()
    stack_nginx, stack_orthanc = pids["nginx"], pids["orthanc"]
    copy, bare = nginx.nginx.process.pid, bench.bare.process.pid
    token = bench.viewer_token
    return [
        Route("stack", stack.base_url, token, stack_nginx, stack_orthanc),
        Route(
            "as stack, bench nginx",
            f"https://localhost:{nginx.as_stack_port}",
            token,
            copy,
            stack_orthanc,
        ),
        Route(
            "no check, bench nginx",
            f"https://localhost:{nginx.no_check_port}",
            token,
            copy,
            stack_orthanc,
        ),
        Route("no authorization", f"https://localhost:{nginx.noauth_port}", "", copy, bare),
    ]


def measure(routes: list[Route], uri: str, rounds: int, seconds: float) -> None:
    for round_ in range(rounds):
        # Each round starts one route later: no route always runs just after the same other.
        for route in routes[round_ % len(routes) :] + routes[: round_ % len(routes)]:
            nginx_before, orthanc_before = (
                cpu_seconds(route.nginx_pid),
                cpu_seconds(route.orthanc_pid),
            )
            run = wrk(
                route.base_url,
                "get.lua",
                connections=E2E_CONNECTIONS,
                seconds=seconds,
                env={"BENCH_HEADER": "token", "BENCH_TOKEN": route.token, "BENCH_PATH": uri},
            )
            if run.errors or not run.requests:
                raise RuntimeError(f"{route.name} {uri}: {run.errors} errors of {run.requests}")
            route.rates.append(run.rate)
            route.nginx_us.append(
                1e6 * (cpu_seconds(route.nginx_pid) - nginx_before) / run.requests
            )
            route.orthanc_us.append(
                1e6 * (cpu_seconds(route.orthanc_pid) - orthanc_before) / run.requests
            )


def spread(values: list[float], digits: int = 0) -> str:
    return (
        f"{statistics.median(values):,.{digits}f} "
        f"({min(values):,.{digits}f}–{max(values):,.{digits}f})"
    )


def table(endpoint: str, routes: list[Route]) -> str:
    baseline = routes[-1]
    rows = [
        f"{endpoint}:",
        "",
        "| path | req/s | ÷ no authorization, run by run | nginx CPU µs/request "
        "| Orthanc CPU µs/request |",
        "|---|---|---|---|---|",
    ]
    for route in routes:
        ratios = [a / b for a, b in zip(route.rates, baseline.rates, strict=True)]
        rows.append(
            f"| {route.name} | {spread(route.rates)} | {spread(ratios, 2)} "
            f"| {spread(route.nginx_us)} | {spread(route.orthanc_us)} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="interleaved runs of each path")
    parser.add_argument("--seconds", type=float, default=3, help="length of one wrk run")
    parser.add_argument("--slices", type=int, default=20, help="CT slices in the study")
    options = parser.parse_args()
    knobs = Knobs(ct_slices=options.slices, multiframes=0)
    with tempfile.TemporaryDirectory(prefix="zhiva-check-cost-") as directory:
        bench = Bench(Path(directory), knobs, nginx_to_stack_orthanc=True)
        bench.start()
        try:
            bench.load_study()
            uris = bench.paths()
            for endpoint in ("WADO-RS instance", "/instances/{id}/file"):
                routes = routes_of(bench)
                measure(routes, "/zhiva" + uris[endpoint], options.rounds, options.seconds)
                print(table(endpoint, routes) + "\n", flush=True)
        finally:
            bench.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
