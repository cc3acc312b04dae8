"""Every measurement of docs/BENCHMARKS.md, in one run; `python -m bench` (or `make bench`)."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import requests

from bench import loads
from bench.environment import BareOrthanc, BenchNginx
from bench.loads import (
    Run,
    Series,
    cpu_seconds,
    memory_by_process,
    memory_of,
    timed,
    upload,
    wrk,
    wrk_threads,
)
from bench.oidc import OidcBench, OidcResults
from bench.study import Study, make_study, with_new_uids
from services.access.handoff import HEADER as HANDOFF_HEADER
from services.access.handoff import bound_value, handoff_key
from services.access.paths import orthanc_path, split_query
from services.access.permissions import handoff_scope
from services.domain.tokens import TokenCodec, TokenKind
from services.stores.accounts import identity
from tests.support.stack import Stack

ADMIN_PASSWORD = "Bench-Admin-Passw0rd!"  # noqa: S105 - a throw-away stack
USER_PASSWORD = "Bench-User-Passw0rd!"  # noqa: S105
CONNECTIONS = (1, 8, 32, 64)
E2E_CONNECTIONS = 16
COLD_USERS = 8
COLD_TOKENS = 16_000  # > 2 x the policy's 4,096-entry LRU per worker; a cycle lasts > 2 s
# cold: a new token each request; warm: one token, one URI; viewer: one token, a new URI.
DECISION_STATES = ("cold", "warm", "viewer")
SERVICES = ("policy", "token", "login")
COMPONENTS = ("nginx", "orthanc", "redis", *SERVICES)


@dataclass
class Knobs:
    runs: int = int(os.environ.get("BENCH_RUNS", "3"))
    seconds: float = float(os.environ.get("BENCH_SECONDS", "5"))
    ct_slices: int = int(os.environ.get("BENCH_CT_SLICES", "200"))
    multiframes: int = int(os.environ.get("BENCH_MULTIFRAMES", "3"))
    frames: int = int(os.environ.get("BENCH_FRAMES", "40"))
    # About 200 MB a run: at 200-300 MB/s a run lasts about a second, long enough to
    # measure (150 gave 0.3-s runs, whose ratios moved by ±0.1 from run to run).
    uploads: int = int(os.environ.get("BENCH_UPLOADS", "400"))
    token_calls: int = int(os.environ.get("BENCH_TOKEN_CALLS", "20"))


@dataclass
class Results:
    knobs: Knobs
    started: str = ""
    load_before: str = ""
    load_after: str = ""
    study: dict[str, Any] = field(default_factory=dict)
    decisions: dict[tuple[str, str, int], Series] = field(default_factory=dict)
    e2e: dict[tuple[str, str], Series] = field(default_factory=dict)
    uploads: dict[tuple[str, str], Series] = field(default_factory=dict)
    tokens: dict[str, tuple[float, float, int]] = field(default_factory=dict)
    memory: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    # Idle, per process of the three services: (service, pid, RSS MB, PSS MB), master first.
    processes: list[tuple[str, int, float, float]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Markdown sections of the benches that run on stacks of their own (shares, viewer).
    sections: list[str] = field(default_factory=list)
    # The OpenID Connect provider (bench/oidc.py): its token endpoint, and decisions on its
    # access tokens, each run beside the same zhiva one.
    oidc: OidcResults = field(default_factory=OidcResults)


def viewer_paths(study_uid: str, count: int = COLD_TOKENS) -> list[str]:
    """`count` different WADO-RS frame URIs of one study, as a viewer scrolling through it asks."""
    return [
        f"/zhiva/pacs/studies/{study_uid}/series/{study_uid}.{n // 400}"
        f"/instances/{study_uid}.{n // 400}.{n % 400}/frames/1"
        for n in range(count)
    ]


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


class Bench:
    def __init__(self, root: Path, knobs: Knobs, *, nginx_to_stack_orthanc: bool = False) -> None:
        self.root = root
        self.knobs = knobs
        self.nginx_to_stack_orthanc = nginx_to_stack_orthanc  # BenchNginx's extra servers
        self.results = Results(knobs)
        self.load_pids: dict[str, int] = {}  # read once before the load (during_load: why)
        self.stack = Stack.prepare(root / "stack", ADMIN_PASSWORD, root / "output")
        self.bare: BareOrthanc | None = None
        self.nginx: BenchNginx | None = None
        self.oidc: OidcBench | None = None
        self.token_offsets: dict[str, int] = {}  # by token file: where its next run starts

    # ----------------------------------------------------------- set-up

    def start(self) -> None:
        say("starting the stack (make up) in " + str(self.root))
        self.stack.up()
        self.bare = BareOrthanc(self.stack, self.root / "bare-orthanc")
        self.bare.start()
        self.nginx = BenchNginx(
            self.stack,
            self.root / "bench-nginx",
            self.bare,
            to_stack_orthanc=self.nginx_to_stack_orthanc,
        )
        self.nginx.start()
        self.http = self.stack.http()
        self.direct = requests.Session()
        self.direct.trust_env = False
        self.codec = TokenCodec.from_settings(self.stack.settings, can_sign=True)
        self.viewers = [
            identity(self.stack.create_user(f"bench-viewer-{i}", USER_PASSWORD))
            for i in range(COLD_USERS)
        ]
        self.editor = identity(self.stack.create_user("bench-editor", USER_PASSWORD, can_edit=True))
        self.admin = identity(
            self.stack.create_user("bench-admin", USER_PASSWORD, can_edit=True, is_admin=True)
        )
        self.viewer_token = self.token(self.viewers[0])
        self.admin_token = self.token(self.admin)
        self.editor_token = self.token(self.editor)

    def decided(self, method: str, path: str) -> dict[str, str]:
        """The header nginx sends Orthanc once it has granted `method path` without a token
        (handoff.py): what the stack's Orthanc is called with directly."""
        orthanc_uri = orthanc_path(split_query(path)[0])
        key = handoff_key(self.stack.settings.secret_key)
        return {HANDOFF_HEADER: bound_value(key, method, handoff_scope(method, orthanc_uri), None)}

    def stop(self) -> None:
        for part in (self.nginx, self.bare):
            if part is not None:
                part.stop()
        self.direct.close()
        self.stack.down()

    def token(self, who: Any) -> str:
        return self.codec.issue(TokenKind.ACCESS, who)[0]

    def load_study(self) -> Study:
        knobs = self.knobs
        say(f"generating the study: {knobs.ct_slices} CT + {knobs.multiframes} multi-frame")
        study = make_study(knobs.ct_slices, knobs.multiframes, knobs.frames)
        for url, headers in (
            (self.stack.orthanc_url, {"token": self.admin_token}),
            (self.bare.url, {}),
        ):
            for instance in study.instances:
                response = self.direct.post(
                    f"{url}/instances", data=instance.data, headers=headers, timeout=120
                )
                response.raise_for_status()
        ct = study.instances[knobs.ct_slices // 2]
        mf = study.instances[-1]
        found = self.direct.post(
            f"{self.bare.url}/tools/lookup", data=ct.sop_uid, timeout=30
        ).json()
        self.ct, self.mf, self.study = ct, mf, study
        self.ct_orthanc_id = next(x["ID"] for x in found if x["Type"] == "Instance")
        self.results.study = {
            "uid": study.uid,
            "instances": len(study.instances),
            "ct_slices": knobs.ct_slices,
            "multiframes": knobs.multiframes,
            "frames": knobs.frames,
            "size_mb": study.size / 1e6,
            "ct_kb": len(ct.data) / 1e3,
            "mf_mb": len(mf.data) / 1e6,
        }
        return study

    def paths(self) -> dict[str, str]:
        s, ct, mf = self.study.uid, self.ct, self.mf
        return {
            "QIDO studies": "/pacs/studies",
            "WADO-RS metadata": f"/pacs/studies/{s}/metadata",
            "WADO-RS instance": f"/pacs/studies/{s}/series/{ct.series_uid}/instances/{ct.sop_uid}",
            "WADO-RS frame": f"/pacs/studies/{s}/series/{mf.series_uid}/instances/{mf.sop_uid}"
            "/frames/1",
            "/instances/{id}/file": f"/instances/{self.ct_orthanc_id}/file",
        }

    # ----------------------------------------------------------- checks

    def check_answers(self) -> None:
        """Every URL the load uses answers 2xx once, so wrk's error count means something."""
        base = self.stack.base_url
        headers = {"token": self.viewer_token}
        check = f"https://localhost:{self.nginx.check_port}"
        noauth = f"https://localhost:{self.nginx.noauth_port}"
        for name, path in self.paths().items():
            for session, url, extra in (
                (self.http, base + "/zhiva" + path, headers),
                (self.http, noauth + "/zhiva" + path, {}),
                (self.direct, self.stack.orthanc_url + path, self.decided("GET", path)),
                (self.direct, self.bare.url + path, {}),
            ):
                response = session.get(url, headers=extra, timeout=60)
                if response.status_code != 200:
                    raise RuntimeError(f"{name}: {url} answered {response.status_code}")
            # Without nginx's header the stack's Orthanc asks for a token, as it must.
            response = self.direct.get(self.stack.orthanc_url + path, timeout=60)
            if response.status_code != 403:
                raise RuntimeError(f"{name}: the stack's Orthanc answered {response.status_code}")
        assert self.http.get(check + "/zhiva/system", headers=headers).status_code == 200
        assert self.http.get(check + "/zhiva/system").status_code == 401
        # The baseline nginx really has no authorization, the stack's really has.
        assert self.http.get(base + "/zhiva/pacs/studies").status_code == 401

    # ----------------------------------------------------------- (1) decisions

    def oidc_runs(self) -> None:
        """The provider's token endpoint (bench/oidc.py); it also mints the OIDC access
        tokens the decision runs then use beside the zhiva ones."""
        self.oidc = OidcBench(self)
        self.oidc.token_endpoint(COLD_TOKENS)

    def decisions(self) -> None:
        knobs, results = self.knobs, self.results
        say(f"issuing {COLD_TOKENS} tokens for the cold runs")
        tokens_file = self.root / "tokens.txt"
        tokens = [self.token(self.viewers[i % COLD_USERS]) for i in range(COLD_TOKENS)]
        tokens_file.write_text("\n".join(tokens) + "\n")
        # A viewer opening studies: one token, and every request names an image the
        # caches have not seen (as many URIs as cold tokens, so a cycle outlasts a grant).
        paths_file = self.root / "paths.txt"
        paths_file.write_text("".join(f"{path}\n" for path in viewer_paths(self.study.uid)))
        path = f"/pacs/studies/{self.study.uid}/metadata"
        policy = f"http://127.0.0.1:{self.stack.settings.policy_service_port}"
        check = f"https://localhost:{self.nginx.check_port}"
        policy_pid = self.load_pids["policy"]  # its CPU time is read around each run
        for state in DECISION_STATES:
            env = {
                "cold": {"BENCH_TOKENS": str(tokens_file)},
                "warm": {"BENCH_TOKEN": self.viewer_token},
                "viewer": {"BENCH_TOKEN": self.viewer_token, "BENCH_PATHS": str(paths_file)},
            }[state]
            for target, url, script, env_path in (
                ("webhook", policy, "webhook.lua", path),
                ("nginx check", check, "get.lua", "/zhiva" + path),
            ):
                if state == "viewer" and target == "webhook":
                    continue  # the webhook has no URI cache: its warm rows say it all
                wrk_env = {**env, "BENCH_PATH": env_path, "BENCH_STUDY_UID": self.study.uid}
                # The same run with the provider's access tokens, beside each zhiva one
                # (bench/oidc.py): the two compare on one machine state.
                kinds = [("zhiva", results.decisions, wrk_env)]
                if self.oidc is not None:
                    oidc_env = {**wrk_env, **self.oidc.token_env(state)}
                    kinds.append(("oidc", results.oidc.decisions, oidc_env))
                for connections in CONNECTIONS:
                    key = (target, state, connections)
                    if connections == 32:
                        self.sample_memory_during(
                            partial(self.decision_run, url, script, connections, wrk_env)
                        )
                    for number in range(knobs.runs):
                        # Each kind goes first every other time: neither always follows.
                        for _kind, table, kind_env in kinds[:: 1 if number % 2 == 0 else -1]:
                            cpu_before = cpu_seconds(policy_pid)
                            run_ = self.decision_run(url, script, connections, kind_env)
                            cpu = cpu_seconds(policy_pid) - cpu_before
                            run_.cpu_us = cpu / max(1, run_.requests) * 1e6
                            table.setdefault(key, Series()).runs.append(run_)
                    for kind, table, _ in kinds:
                        series = table[key]
                        say(
                            f"decisions {target} {state} c={connections} {kind}: "
                            f"{series.median():.0f}/s p99 {series.median('p99_ms'):.1f} ms "
                            f"errors {series.errors}"
                        )

    def decision_run(self, url: str, script: str, connections: int, env: dict[str, str]) -> Run:
        # A token file is read on from where its last run (the memory runs' too) stopped, not
        # from its start: otherwise a run shorter than the policy's LRU met the tokens the run
        # before it had just cached, and the zhiva rows at 32 connections, after their
        # memory run, were warm (the OIDC rows beside them were not).
        tokens = env.get("BENCH_TOKENS")
        if tokens:
            env = {**env, "BENCH_OFFSET": str(self.token_offsets.get(tokens, 0))}
        run_ = wrk(url, script, connections=connections, seconds=self.knobs.seconds, env=env)
        if tokens:
            step = math.ceil(run_.requests / wrk_threads(connections))
            self.token_offsets[tokens] = self.token_offsets.get(tokens, 0) + step
        return run_

    # ----------------------------------------------------------- (2) end to end

    def end_to_end(self) -> None:
        knobs, results = self.knobs, self.results

        # What get.lua sends, per path: BENCH_TOKEN in the header BENCH_HEADER (none when empty).
        def viewer(path: str) -> dict[str, str]:
            return {"BENCH_HEADER": "token", "BENCH_TOKEN": self.viewer_token}

        def nothing(path: str) -> dict[str, str]:
            return {"BENCH_HEADER": "token", "BENCH_TOKEN": ""}

        # What the Python plugin costs by itself: the stack's Orthanc with nginx's header.
        def decided(path: str) -> dict[str, str]:
            value = self.decided("GET", path)[HANDOFF_HEADER]
            return {"BENCH_HEADER": HANDOFF_HEADER, "BENCH_TOKEN": value}

        targets = (
            ("stack", self.stack.base_url, "/zhiva", viewer),
            (
                "nginx, no authorization",
                f"https://localhost:{self.nginx.noauth_port}",
                "/zhiva",
                nothing,
            ),
            ("stack's Orthanc directly", self.stack.orthanc_url, "", decided),
            ("Orthanc directly", self.bare.url, "", nothing),
        )

        def load(base: str, prefix: str, header: Callable[[str], dict[str, str]], path: str) -> Run:
            return wrk(
                base,
                "get.lua",
                connections=E2E_CONNECTIONS,
                seconds=knobs.seconds,
                env={**header(path), "BENCH_PATH": prefix + path},
            )

        # Runs interleaved (stack, baseline, direct, stack, ...): a machine whose load drifts
        # (others' test suites) then weighs on every column alike.
        for name, path in self.paths().items():
            _, base, prefix, header = targets[0]
            self.sample_memory_during(partial(load, base, prefix, header, path))
            for _ in range(knobs.runs):
                for target, base, prefix, header in targets:
                    series = results.e2e.setdefault((name, target), Series())
                    series.runs.append(load(base, prefix, header, path))
            for target, *_ in targets:
                series = results.e2e[(name, target)]
                say(
                    f"e2e {name} via {target}: {series.median():.0f}/s "
                    f"p99 {series.median('p99_ms'):.1f} ms errors {series.errors}"
                )

    # ----------------------------------------------------------- (3) uploads

    def uploads(self) -> None:
        """Upload MB/s through four paths, interleaved run by run.

        The target compares the stack with Orthanc directly; the two middle paths
        split the gap: nginx/TLS without authorization (to the bare Orthanc) is what
        TLS and the proxy hop cost, the stack's own Orthanc called directly with
        nginx's decided header is what its Python plugin costs.
        """
        knobs, results = self.knobs, self.results
        source = self.ct.data
        targets = (
            ("stack", self.stack.base_url + "/zhiva", self.http, {"token": self.editor_token}),
            (
                "nginx, no authorization",
                f"https://localhost:{self.nginx.noauth_port}/zhiva",
                self.http,
                {},
            ),
            ("stack's Orthanc directly", self.stack.orthanc_url, self.direct, None),
            ("Orthanc directly", self.bare.url, self.direct, {}),
        )
        for method in ("STOW-RS", "POST /instances"):
            stow = method == "STOW-RS"
            path = "/pacs/studies" if stow else "/instances"
            for _ in range(knobs.runs):
                for target, base, session, fixed in targets:
                    # The stack's Orthanc directly: nginx's header for this very upload path.
                    headers = self.decided("POST", path) if fixed is None else fixed
                    series = results.uploads.setdefault((method, target), Series())
                    bodies = [with_new_uids(source) for _ in range(knobs.uploads)]
                    mb_s = upload(session, base + path, bodies, stow=stow, headers=headers)
                    series.runs.append(_run_mb(mb_s))
            for target, *_ in targets:
                series = results.uploads[(method, target)]
                say(f"upload {method} via {target}: {series.median('mb_per_s'):.1f} MB/s")

    # ----------------------------------------------------------- (4) token work

    def token_work(self) -> None:
        n, base, http = self.knobs.token_calls, self.stack.base_url, self.http
        user = "bench-viewer-0"
        refresh_tokens: list[str] = []
        auth_tokens: list[str] = []

        def sign_in() -> None:
            auth_tokens.append(loads.sign_in(http, base, user, USER_PASSWORD))

        made = itertools.count()

        def generate_token() -> None:
            # A new user each time: overwriting one revokes the auth tokens made before.
            response = http.post(
                base + "/auth/generate-token",
                json={
                    "name": "Bench Made",
                    "username": f"bench-made-{next(made)}",
                    "password": ADMIN_PASSWORD,
                    "canEditResource": False,
                    "userPassword": USER_PASSWORD,
                    "createUserIfNotExists": True,
                },
                timeout=30,
            )
            response.raise_for_status()
            auth_tokens.append(response.json()["token"])

        def generate_access_token() -> None:
            refresh_tokens.append(loads.exchange(http, base, auth_tokens.pop()))

        def refresh() -> None:
            loads.refresh(http, base, refresh_tokens[0])

        self.results.tokens["sign-in (POST /auth/sign-user)"] = (*timed([sign_in] * n), n)
        self.results.tokens["generate-token (new user's password set)"] = (
            *timed([generate_token] * n),
            n,
        )
        self.results.tokens["generate-access-token"] = (*timed([generate_access_token] * n), n)
        self.results.tokens["refresh-token"] = (*timed([refresh] * n), n)
        for name, (p50, p99, _) in self.results.tokens.items():
            say(f"token work {name}: p50 {p50:.1f} ms p99 {p99:.1f} ms")

    # ----------------------------------------------------------- (5) memory

    def pids(self) -> dict[str, int]:
        found = {}
        for name in COMPONENTS:
            out = self.stack.supervisorctl("pid", name).stdout.strip()
            if out.isdigit():
                found[name] = int(out)
        return found

    def sample_memory(self, state: str, *, by_process: bool = False) -> None:
        pids = self.pids()
        for name in COMPONENTS:
            if name in pids:
                self.results.memory[(name, state)] = memory_of(pids[name])
        for name in SERVICES if by_process else ():
            if name in pids:
                for pid, rss, pss in memory_by_process(pids[name]):
                    self.results.processes.append((name, pid, rss, pss))

    def sample_memory_during(self, run: Callable[[], Run]) -> None:
        """Memory under load, read halfway through `run`, a run of the stack's that is not
        counted: reading /proc/PID/smaps_rollup takes CPU and each process's memory lock,
        which would be charged to the stack's rate alone."""
        sampler = threading.Timer(self.knobs.seconds / 2, self.during_load)
        sampler.start()
        run()
        sampler.join()

    def during_load(self) -> None:
        # Each component at its peak over the loads: keep the largest sample. The pids are
        # read before the load: supervisorctl is a Python program, about a second of CPU
        # for all components, which would weigh on the run being measured.
        pids = self.load_pids
        for name in COMPONENTS:
            if name in pids:
                rss, pss = memory_of(pids[name])
                old = self.results.memory.get((name, "load"), (0.0, 0.0))
                self.results.memory[(name, "load")] = (max(rss, old[0]), max(pss, old[1]))

    # ----------------------------------------------------------- all

    def versions(self) -> None:
        def first_line(command: list[str]) -> str:
            try:
                out = subprocess.run(command, capture_output=True, text=True, timeout=20)
                return (out.stdout or out.stderr).strip().splitlines()[0]
            except (OSError, IndexError, subprocess.TimeoutExpired):
                return "?"

        system = self.direct.get(f"{self.bare.url}/system", timeout=10).json()
        plugins = self.direct.get(f"{self.bare.url}/plugins/dicom-web", timeout=10).json()
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "?",
        )
        memory = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        self.results.versions = {
            "CPU": f"{cpu}, {os.cpu_count()} cores",
            "memory": f"{int(memory) / 1024 / 1024:.1f} GB",
            "kernel": os.uname().release,
            "OS": first_line(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
            "Orthanc": system.get("Version", "?"),
            "DICOMweb plugin": plugins.get("Version", "?"),
            "nginx": first_line(["nginx", "-v"]),
            "Redis": first_line(["redis-server", "--version"]),
            "Python": first_line([str(Path(".venv/bin/python").resolve()), "--version"]),
            "gunicorn": first_line([str(Path(".venv/bin/gunicorn").resolve()), "--version"]),
            "wrk": first_line(["wrk", "--version"]),
        }

    def run(self) -> Results:
        results = self.results
        results.started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        results.load_before = loadavg()
        self.start()
        try:
            self.load_study()
            self.versions()
            self.check_answers()
            time.sleep(3)
            self.sample_memory("idle", by_process=True)
            self.load_pids = self.pids()
            self.oidc_runs()
            self.decisions()
            self.end_to_end()
            self.uploads()
            self.token_work()
            # Idle again, after every run: what the work left behind (a worker's pages that
            # are no longer shared with its master, caches), which a start-up figure hides.
            time.sleep(3)
            self.sample_memory("after")
        except Exception:
            self.say_logs()  # the stack's files go with the temporary directory
            raise
        finally:
            results.load_after = loadavg()
            self.stop()
        return results

    def say_logs(self, lines: int = 20) -> None:
        """The ends of the logs that explain a failed request: nginx's errors, Orthanc,
        supervisord (a restarted process)."""
        for name in ("nginx-error.log", "orthanc.log", "supervisord.log"):
            path = self.stack.layout.log_dir / name
            try:
                tail = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError as error:
                tail = [f"({error.strerror})"]
            say(f"last lines of {path}:\n" + "\n".join(tail))


def _run_mb(mb_s: float) -> Run:
    return Run(rate=0.0, p50_ms=0.0, p99_ms=0.0, errors=0, requests=0, mb_per_s=mb_s)


def main() -> int:
    from bench import shares, viewer
    from bench.report import write_report

    knobs = Knobs()
    with tempfile.TemporaryDirectory(prefix="zhiva-bench-") as directory:
        results = Bench(Path(directory), knobs).run()
    results.sections.append(shares.measure_section())
    results.sections.append(viewer.measure_section())
    target = Path(os.environ.get("BENCH_OUTPUT", "docs/BENCHMARKS.md"))
    write_report(results, target)
    say(f"wrote {target}")
    return 0
