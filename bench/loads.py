"""Load drivers: wrk (separate process, loopback) for request rates, Python for uploads and
token work, /proc for memory."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

LUA_DIR = Path(__file__).resolve().parent / "lua"


@dataclass
class Run:
    rate: float  # requests per second
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    mb_per_s: float = 0.0
    # CPU time of the policy service's processes per request (decisions only).
    cpu_us: float = 0.0


@dataclass
class Series:
    """Several runs of one measurement; the report shows the median and min-max."""

    runs: list[Run] = field(default_factory=list)

    def _values(self, name: str) -> list[float]:
        return [getattr(r, name) for r in self.runs]

    def median(self, name: str = "rate") -> float:
        return statistics.median(self._values(name)) if self.runs else float("nan")

    def span(self, name: str = "rate") -> tuple[float, float]:
        values = self._values(name)
        return (min(values), max(values)) if values else (float("nan"), float("nan"))

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.runs)


def wrk_threads(connections: int) -> int:
    """wrk's threads for `connections` (each thread holds connections / threads of them)."""
    return 1 if connections == 1 else 2


def wrk(
    url: str,
    script: str,
    *,
    connections: int,
    seconds: float,
    env: dict[str, str],
) -> Run:
    """One wrk run; non-2xx answers and socket errors are counted as errors."""
    threads = wrk_threads(connections)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_DIR / script),
        url,
    ]
    result = subprocess.run(
        command,
        env={**os.environ, "BENCH_LUA_DIR": str(LUA_DIR), **env},
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary:\n{result.stdout}\n{result.stderr}")
    data = json.loads(line.split(" ", 1)[1])
    errors = sum(data[k] for k in data if k.startswith("errors_"))
    duration = data["duration_us"] / 1e6
    return Run(
        rate=data["requests"] / duration,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=errors,
        requests=data["requests"],
        mb_per_s=data["bytes"] / duration / 1e6,
    )


def timed(calls: list[Callable[[], None]]) -> tuple[float, float]:
    """(p50 ms, p99 ms) of calls made one after another."""
    durations = []
    for call in calls:
        start = time.perf_counter()
        call()
        durations.append((time.perf_counter() - start) * 1000)
    durations.sort()
    p99_index = min(len(durations) - 1, round(0.99 * (len(durations) - 1)))
    return statistics.median(durations), durations[p99_index]


def upload(
    session: requests.Session,
    url: str,
    bodies: list[bytes],
    *,
    stow: bool,
    headers: dict[str, str],
    workers: int = 4,
) -> float:
    """Upload every body (new UIDs each) with `workers` threads; returns MB/s."""
    from concurrent.futures import ThreadPoolExecutor

    boundary = "benchboundary6"

    def one(body: bytes) -> None:
        if stow:
            data = (
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                + body
                + f"\r\n--{boundary}--\r\n".encode()
            )
            content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        else:
            data, content_type = body, "application/dicom"
        response = session.post(
            url, data=data, headers={**headers, "Content-Type": content_type}, timeout=120
        )
        if response.status_code != 200:
            raise RuntimeError(f"upload to {url} answered {response.status_code}")

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, bodies))
    elapsed = time.perf_counter() - start
    return sum(len(b) for b in bodies) / elapsed / 1e6


# ------------------------------------------------------------------ token calls


def sign_in(http: requests.Session, base: str, username: str, password: str) -> str:
    """POST /auth/sign-user as the login page does: the auth token it hands out."""
    response = http.post(
        base + "/auth/sign-user",
        json={"username": username, "password": password, "referer": base + "/"},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()["token"]


def exchange(http: requests.Session, base: str, auth_token: str) -> str:
    """POST /auth/generate-access-token with a one-off auth token: the refresh token."""
    return _bearer_post(http, base + "/auth/generate-access-token", auth_token).strip().strip('"')


def refresh(http: requests.Session, base: str, refresh_token: str) -> None:
    """POST /auth/refresh-token."""
    _bearer_post(http, base + "/auth/refresh-token", refresh_token)


def _bearer_post(http: requests.Session, url: str, token: str) -> str:
    response = http.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    response.raise_for_status()
    return response.text


# ------------------------------------------------------------------ memory


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return pids


def smaps_rollup(pid: int) -> dict[str, float]:
    """/proc/PID/smaps_rollup's figures (Rss, Pss, Private_Dirty, ...) in MB."""
    found = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        found[name] = int(value.split()[0]) / 1024
    return found


def memory_by_process(pid: int) -> list[tuple[int, float, float]]:
    """(pid, RSS MB, PSS MB) of a process and each of its children, parent first."""
    found = []
    for each in process_tree(pid):
        try:
            figures = smaps_rollup(each)
        except OSError:
            continue
        found.append((each, figures["Rss"], figures["Pss"]))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children so far (/proc/PID/stat)."""
    ticks = 0
    for each in process_tree(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def memory_of(pid: int) -> tuple[float, float]:
    """(RSS MB, PSS MB) of a process and its children (gunicorn master + workers, nginx)."""
    processes = memory_by_process(pid)
    return sum(p[1] for p in processes), sum(p[2] for p in processes)
