"""Share tokens against role tokens: the same decision runs, on one machine, in one run.

`python -m bench.shares` (a few minutes; `BENCH_RUNS`, `BENCH_SECONDS` as for `make bench`,
`BENCH_SHARE_CONNECTIONS` a comma list, default "8,32"; the section is printed, and written
to `BENCH_OUTPUT` when that is set, never to docs/BENCHMARKS.md); `make bench` runs it after
its other runs and puts the section into docs/BENCHMARKS.md.

The issue's targets, judged at 32 connections:

- *cold* decisions (a token the caches have not seen on every request) for share tokens at
  least 0.80 × those for role tokens (zhiva access tokens of viewers), at the policy
  webhook and at the nginx check; the cold share tokens are COLD_TOKENS share tokens of the
  study, each with its own id (a share's id is its token's `jti`), cycled like the role ones;
- the *viewer* path (one token, every request a frame URI not asked before, all under
  `/zhiva/pacs/studies/<UID>/…` of the shared study, bench/run.py's `viewer_paths`) within
  10 % of role tokens at the nginx check (ratio ≥ 0.90).

Everything else is bench/run.py's: the stack, the `check` nginx (the stack's `/zhiva/`
location and grant cache, an empty file instead of Orthanc), `decision_run` (wrk with
bench/lua's webhook.lua and get.lua), the policy CPU per request. Each run of a role row is
followed at once by the same run with share tokens (the order alternates run by run), so
the two compare on one machine state.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.loads import Run, Series, cpu_seconds
from bench.report import _mark, _ms, _rate, _ratio
from bench.run import COLD_TOKENS, COLD_USERS, Bench, Knobs, loadavg, say, viewer_paths
from services.domain.shares import ShareRecord, issue_share_token, new_share_id

KINDS = ("role", "share")
# (state, target): what the targets name; warm (one token, one URI) is bench/run.py's.
RUNS = (("cold", "webhook"), ("cold", "nginx check"), ("viewer", "nginx check"))
JUDGED_CONNECTIONS = 32
TARGETS = {"cold": 0.80, "viewer": 0.90}
SHARE_LIFETIME = 24 * 3600
# A share of a study that is not the bench's: refused on the bench's paths (checked first).
OTHER_STUDY_UID = "1.2.3.4"
OTHER_STUDY_ID = "00000000-00000000-00000000-00000000-00000000"


def connections_knob() -> tuple[int, ...]:
    text = os.environ.get("BENCH_SHARE_CONNECTIONS", "8,32")
    return tuple(int(part) for part in text.split(",") if part.strip())


@dataclass
class ShareResults:
    started: str = ""
    load_before: str = ""
    load_after: str = ""
    cpu: str = ""
    knobs: Knobs = field(default_factory=Knobs)
    connections: tuple[int, ...] = ()
    study_uid: str = ""
    token_chars: tuple[int, int] = (0, 0)  # role, share
    # By (target, state, connections, kind).
    decisions: dict[tuple[str, str, int, str], Series] = field(default_factory=dict)


class ShareBench:
    """The decision runs of bench/run.py, role and share tokens side by side."""

    def __init__(self, bench: Bench, results: ShareResults) -> None:
        self.bench = bench
        self.results = results
        self.root = bench.root

    def study_id(self) -> str:
        """Orthanc's ID of the bench's study in the stack's Orthanc (what a share names)."""
        bench = self.bench
        response = bench.direct.post(
            f"{bench.stack.orthanc_url}/tools/lookup",
            data=bench.study.uid,
            headers={"token": bench.admin_token},
            timeout=30,
        )
        response.raise_for_status()
        return next(item["ID"] for item in response.json() if item["Type"] == "Study")

    def share_token(self, study_uid: str, study_id: str) -> str:
        now = int(time.time())
        share = ShareRecord(
            id=new_share_id(),
            study_uid=study_uid,
            study_id=study_id,
            created_by="bench-viewer-0",
            created_at=now,
            expires_at=now + SHARE_LIFETIME,
            pin_hash=None,
        )
        return issue_share_token(self.bench.codec, share)[0]

    def mint(self) -> dict[str, dict[str, str]]:
        """wrk's environment per kind and state: token files, the warm token, the paths."""
        bench = self.bench
        study_uid, study_id = bench.study.uid, self.study_id()
        say(f"issuing {COLD_TOKENS} role tokens and {COLD_TOKENS} share tokens")
        role = [bench.token(bench.viewers[i % COLD_USERS]) for i in range(COLD_TOKENS)]
        share = [self.share_token(study_uid, study_id) for _ in range(COLD_TOKENS)]
        files = {}
        for kind, tokens in (("role", role), ("share", share)):
            files[kind] = self.root / f"{kind}-tokens.txt"
            files[kind].write_text("\n".join(tokens) + "\n")
        paths = self.root / "share-paths.txt"
        paths.write_text("".join(f"{path}\n" for path in viewer_paths(study_uid)))
        self.check(role[0], share[0], self.share_token(OTHER_STUDY_UID, OTHER_STUDY_ID))
        self.results.study_uid = study_uid
        self.results.token_chars = (len(role[0]), len(share[0]))
        warm = {"role": bench.viewer_token, "share": share[0]}
        return {
            kind: {
                "cold": str(files[kind]),
                "warm": warm[kind],
                "paths": str(paths),
            }
            for kind in KINDS
        }

    def check(self, role: str, share: str, other_share: str) -> None:
        """Both kinds are granted where the runs send them (the webhook answers 200 either
        way, so wrk's error count cannot tell), and a share of another study is not."""
        bench = self.bench
        assert bench.nginx is not None
        uid = bench.study.uid
        path = f"/pacs/studies/{uid}/metadata"
        check = f"https://localhost:{bench.nginx.check_port}"
        policy = f"http://127.0.0.1:{bench.stack.settings.policy_service_port}"
        frame = viewer_paths(uid, 1)[0]
        for token, granted in ((role, True), (share, True), (other_share, False)):
            body = {
                "method": "get",
                "level": "study",
                "dicom-uid": uid,
                "uri": path,
                "token-key": "token",
                "token-value": token,
            }
            answer = bench.direct.post(f"{policy}/webhook", json=body, timeout=30).json()
            if answer.get("granted") is not granted:
                raise RuntimeError(f"webhook answered {answer} (expected granted={granted})")
            for url in (check + "/zhiva" + path, check + frame):
                status = bench.http.get(url, headers={"token": token}, timeout=30).status_code
                if (status == 200) is not granted:
                    raise RuntimeError(f"{url} answered {status} (expected granted={granted})")

    def run(self) -> None:
        bench, results = self.bench, self.results
        assert bench.nginx is not None
        env_of = self.mint()
        uid = bench.study.uid
        path = f"/pacs/studies/{uid}/metadata"
        policy = f"http://127.0.0.1:{bench.stack.settings.policy_service_port}"
        check = f"https://localhost:{bench.nginx.check_port}"
        urls = {
            "webhook": (policy, "webhook.lua", path),
            "nginx check": (check, "get.lua", "/zhiva" + path),
        }
        policy_pid = bench.load_pids["policy"]
        for state, target in RUNS:
            url, script, bench_path = urls[target]

            def env(kind: str, state: str = state, bench_path: str = bench_path) -> dict[str, str]:
                found = env_of[kind]
                common = {"BENCH_PATH": bench_path, "BENCH_STUDY_UID": uid}
                if state == "cold":
                    return {**common, "BENCH_TOKENS": found["cold"]}
                return {**common, "BENCH_TOKEN": found["warm"], "BENCH_PATHS": found["paths"]}

            for connections in results.connections:
                for number in range(bench.knobs.runs):
                    # Alternating which goes first: neither kind always follows the other.
                    order = KINDS if number % 2 == 0 else KINDS[::-1]
                    for kind in order:
                        before = cpu_seconds(policy_pid)
                        run_: Run = bench.decision_run(url, script, connections, env(kind))
                        cpu = cpu_seconds(policy_pid) - before
                        run_.cpu_us = cpu / max(1, run_.requests) * 1e6
                        key = (target, state, connections, kind)
                        results.decisions.setdefault(key, Series()).runs.append(run_)
                role = results.decisions[(target, state, connections, "role")]
                share = results.decisions[(target, state, connections, "share")]
                say(
                    f"shares {target} {state} c={connections}: role {role.median():.0f}/s, "
                    f"share {share.median():.0f}/s ({share.median() / role.median():.2f}), "
                    f"errors {role.errors}/{share.errors}, load {loadavg()}"
                )


def share_section(results: ShareResults) -> str:
    out: list[str] = []
    w = out.append
    k = results.knobs
    role_chars, share_chars = results.token_chars
    w("### Share tokens")
    w("")
    w(
        f"Run of {results.started} on {results.cpu}. Load average (1, 5, 15 min) before: "
        f"{results.load_before}, after: {results.load_after}. {k.runs} runs per figure, "
        f"{k.seconds:g} s each (wrk); median, min–max in brackets."
    )
    w("")
    w(
        "Section 1's decision runs, each run of role tokens (zhiva access tokens of "
        f"{COLD_USERS} viewers) beside the same run with share tokens of the study, the order "
        "alternating run by run. *Cold*: every request a token the caches have not seen "
        f"({COLD_TOKENS:,} tokens of each kind, cycled; each share token its own share id); "
        "*viewer*: one token, every request a frame URI not asked before under "
        "`/zhiva/pacs/studies/<UID>/…` of the shared study (nginx's grant cache keeps a "
        "share's grant for its study's class only). Webhook: `POST /webhook` to the policy "
        "service, Orthanc's plugin's body for `/pacs/studies/<UID>/metadata`. nginx check: "
        "the stack's `/zhiva/` location and grant cache serving an empty file. A share token "
        f"is {share_chars:,} characters, a role token {role_chars:,}. *Policy CPU*: user + "
        "system time of the policy service's processes over the run, per request."
    )
    w("")
    w(
        "| target | caches | connections | role decisions/s | share decisions/s | share / role "
        "| role p99 ms | share p99 ms | errors role / share | policy CPU µs, role "
        "| policy CPU µs, share |"
    )
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    keys = dict.fromkeys(key[:3] for key in results.decisions)
    for target, state, connections in keys:
        role = results.decisions[(target, state, connections, "role")]
        share = results.decisions[(target, state, connections, "share")]
        w(
            f"| {target} | {state} | {connections} | {_rate(role)} | {_rate(share)} | "
            f"{_ratio(share.median() / role.median())} | {_ms(role, 'p99_ms')} | "
            f"{_ms(share, 'p99_ms')} | {role.errors} / {share.errors} | "
            f"{_rate(role, 'cpu_us')} | {_rate(share, 'cpu_us')} |"
        )
    w("")
    w("| target | measured | |")
    w("|---|---|---|")
    for target, state, connections in keys:
        if connections != JUDGED_CONNECTIONS:
            continue
        least = TARGETS[state]
        ratio = (
            results.decisions[(target, state, connections, "share")].median()
            / results.decisions[(target, state, connections, "role")].median()
        )
        w(
            f"| {target}, {state}, {connections} connections: share / role ≥ {least:.2f} "
            f"| {_ratio(ratio)} | {_mark(ratio >= least)} |"
        )
    return "\n".join(out)


def cpu_model() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    return f"{model}, {os.cpu_count()} cores"


def measure_section() -> str:
    """The stack, a small study (it only names the URIs: the check serves an empty file),
    then the share runs, as a report section (`make bench` runs it after the others)."""
    knobs = Knobs()
    for name, small in (("ct_slices", 10), ("multiframes", 1), ("frames", 2)):
        if f"BENCH_{name.upper()}" not in os.environ:
            setattr(knobs, name, small)
    results = ShareResults(knobs=knobs, connections=connections_knob(), cpu=cpu_model())
    with tempfile.TemporaryDirectory(prefix="zhiva-bench-shares-") as directory:
        bench = Bench(Path(directory), knobs)
        results.started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        results.load_before = loadavg()
        bench.start()
        try:
            bench.load_study()
            bench.load_pids = bench.pids()
            ShareBench(bench, results).run()
        except Exception:
            bench.say_logs()
            raise
        finally:
            results.load_after = loadavg()
            bench.stop()
    return share_section(results)


def main() -> int:
    """`python -m bench.shares`: the share runs alone; BENCH_OUTPUT names a file for them."""
    target = os.environ.get("BENCH_OUTPUT")
    if target and Path(target).resolve() == Path("docs/BENCHMARKS.md").resolve():
        print("BENCH_OUTPUT: a partial run does not rewrite docs/BENCHMARKS.md", file=sys.stderr)
        return 2
    text = measure_section()
    print(text)
    if target:
        Path(target).write_text(text + "\n")
        say(f"wrote {target}")
    return 0


if __name__ == "__main__":
    from bench.shares import main as imported_main  # one copy of the module, as bench.run's

    raise SystemExit(imported_main())
