"""docs/BENCHMARKS.md from one bench run: every figure, median of the runs with min-max beside it.

The measured part is between the BEGIN/END markers; what is written around it
by hand (analysis, targets missed and why) is kept when the file is rewritten.
"""

from __future__ import annotations

import math
from pathlib import Path

from bench.loads import Series
from bench.run import COMPONENTS, E2E_CONNECTIONS, SERVICES, Results

# The memory table's columns: at start-up, under load, and idle again after every run.
MEMORY_STATES = ("idle", "load", "after")

BEGIN = "<!-- BEGIN MEASURED (written by `make bench`; edit outside these markers) -->"
END = "<!-- END MEASURED -->"

TARGET_RATIO = {
    "QIDO studies": 0.90,
    "WADO-RS metadata": 0.90,
    "WADO-RS instance": 0.90,
    "WADO-RS frame": 0.90,
    "/instances/{id}/file": 0.80,
}


def _rate(series: Series, name: str = "rate", digits: int = 0) -> str:
    low, high = series.span(name)
    fmt = f"{{:,.{digits}f}}"
    return f"{fmt.format(series.median(name))} ({fmt.format(low)}–{fmt.format(high)})"


def _ms(series: Series, name: str) -> str:
    low, high = series.span(name)
    return f"{series.median(name):.1f} ({low:.1f}–{high:.1f})"


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _ratio(value: float) -> str:
    """Two decimals cut, not rounded: 0.896 against a target of 0.90 reads 0.89, missed."""
    return f"{math.floor(value * 100) / 100:.2f}"


def measured(results: Results) -> str:
    k = results.knobs
    out: list[str] = []
    w = out.append
    w(
        f"Run of {results.started}. Load average (1, 5, 15 min) before: {results.load_before}, "
        f"after: {results.load_after}."
    )
    w("")
    w("| | |")
    w("|---|---|")
    for key, value in results.versions.items():
        w(f"| {key} | {value} |")
    s = results.study
    w(
        f"| study | {s['instances']} instances, {s['size_mb']:.0f} MB: {s['ct_slices']} CT 512×512 "
        f"16-bit ({s['ct_kb']:.0f} KB each), {s['multiframes']} multi-frame of {s['frames']} "
        f"frames ({s['mf_mb']:.1f} MB each) |"
    )
    w(f"| runs | {k.runs} per figure, {k.seconds:g} s each (wrk); median, min–max in brackets |")
    w("")

    w("### 1. Decisions")
    w("")
    w(
        "Webhook: `POST /webhook` straight to the policy service (gunicorn), the body Orthanc's "
        "plugin sends. nginx check: `GET /zhiva/pacs/studies/{uid}/metadata` over TLS to an nginx "
        "with the stack's own `/zhiva/` location and `/_authorize` cache, serving an empty file "
        "instead of proxying to Orthanc. *Cold*: every request carries a token the caches have "
        f"not seen ({COLD_TOKENS_TEXT}); *warm*: one token, one URI; *viewer*: one token "
        f"(warm), and every request names a frame URI not asked before ({COLD_TOKENS_TEXT_URIS}), "
        "as a viewer scrolling through studies does. *Policy CPU*: user + "
        "system time of the policy service's processes (gunicorn master and workers) over the "
        "run, per request; it moves less than the rates with what else the machine runs, "
        "but it moves too (docs/BENCHMARKS.md, below the figures)."
    )
    w("")
    w(
        "| target | caches | connections | decisions/s | p50 ms | p99 ms | errors "
        "| policy CPU µs per request |"
    )
    w("|---|---|---|---|---|---|---|---|")
    for (target, state, connections), series in results.decisions.items():
        w(
            f"| {target} | {state} | {connections} | {_rate(series)} | {_ms(series, 'p50_ms')} | "
            f"{_ms(series, 'p99_ms')} | {series.errors} | {_rate(series, 'cpu_us')} |"
        )
    w("")

    w("### 2. End to end")
    w("")
    w(
        f"wrk, {E2E_CONNECTIONS} connections, a viewer token in the `token` header. *stack*: "
        "nginx/TLS → auth_request (cached) → Orthanc with the plugin. *nginx, no authorization*: "
        "the same nginx server block without `auth_request`, to an Orthanc without the Python "
        "plugin. *stack's Orthanc directly*: the stack's Orthanc on its HTTP port with nginx's "
        "decided header (what its Python plugin costs by itself). *Orthanc directly*: the "
        "Orthanc without the plugin on its HTTP port. The four run interleaved."
    )
    w("")
    w(
        "| endpoint | stack req/s | no-auth nginx req/s | stack's Orthanc direct req/s "
        "| Orthanc direct req/s | ratio to no-auth nginx (target) | ratio to Orthanc direct "
        "| plugin: stack's Orthanc / Orthanc | stack p99 ms |"
    )
    w("|---|---|---|---|---|---|---|---|---|")
    endpoints = list(dict.fromkeys(name for name, _ in results.e2e))
    for name in endpoints:
        stack = results.e2e[(name, "stack")]
        noauth = results.e2e[(name, "nginx, no authorization")]
        plugin = results.e2e.get((name, "stack's Orthanc directly"))
        direct = results.e2e[(name, "Orthanc directly")]
        ratio = stack.median() / noauth.median()
        target = TARGET_RATIO[name]
        w(
            f"| {name} | {_rate(stack)} | {_rate(noauth)} | "
            f"{_rate(plugin) if plugin else '–'} | {_rate(direct)} | "
            f"{_ratio(ratio)} (≥ {target:.2f}: {_mark(ratio >= target)}) | "
            f"{stack.median() / direct.median():.2f} | "
            f"{f'{plugin.median() / direct.median():.2f}' if plugin else '–'} | "
            f"{_ms(stack, 'p99_ms')} |"
        )
    errors = sum(s.errors for s in results.e2e.values())
    w("")
    w(f"Errors (non-2xx or socket) over all end-to-end runs: {errors}.")
    w("")

    w("### 3. Upload")
    w("")
    w(
        f"{k.uploads} CT instances per run, new UIDs each time, 4 client threads (Python "
        "`requests`); SyncStorageArea on in both Orthancs. *stack*: nginx/TLS with an editor "
        "token → auth_request → Orthanc with the plugin. *nginx, no authorization*: the same "
        "`/zhiva/` location without `auth_request`, over TLS, to the Orthanc without the plugin. "
        "*stack's Orthanc directly*: plain HTTP to the stack's Orthanc with nginx's decided "
        "header (what its Python plugin costs). *Orthanc directly*: plain HTTP to the Orthanc "
        "without the plugin. The four run interleaved."
    )
    w("")
    w(
        "| method | stack MB/s | no-auth nginx MB/s | stack's Orthanc direct MB/s "
        "| Orthanc direct MB/s | ratio to Orthanc direct (target ≥ 0.90) "
        "| ratio to no-auth nginx |"
    )
    w("|---|---|---|---|---|---|---|")
    for method in dict.fromkeys(m for m, _ in results.uploads):
        stack = results.uploads[(method, "stack")]
        noauth = results.uploads.get((method, "nginx, no authorization"))
        plugin = results.uploads.get((method, "stack's Orthanc directly"))
        direct = results.uploads[(method, "Orthanc directly")]
        ratio = stack.median("mb_per_s") / direct.median("mb_per_s")
        to_noauth = f"{stack.median('mb_per_s') / noauth.median('mb_per_s'):.2f}" if noauth else "–"
        w(
            f"| {method} | {_rate(stack, 'mb_per_s', 1)} | "
            f"{_rate(noauth, 'mb_per_s', 1) if noauth else '–'} | "
            f"{_rate(plugin, 'mb_per_s', 1) if plugin else '–'} | "
            f"{_rate(direct, 'mb_per_s', 1)} | {_ratio(ratio)} ({_mark(ratio >= 0.9)}) | "
            f"{to_noauth} |"
        )
    w("")

    w("### 4. Token work")
    w("")
    w(
        "One client, calls one after another through nginx/TLS. Passwords are hashed with "
        "bcrypt at cost 12 on purpose (about a quarter of a second per hash on this machine): "
        "sign-in verifies one hash, generate-token verifies the admin password and hashes the "
        "new user's password (two). With this many calls p99 is close to the slowest call."
    )
    w("")
    w("| call | calls | p50 ms | p99 ms |")
    w("|---|---|---|---|")
    for name, (p50, p99, n) in results.tokens.items():
        w(f"| {name} | {n} | {p50:.1f} | {p99:.1f} |")
    w("")

    w("### 5. Memory")
    w("")
    w(
        "Each component with its children (gunicorn master + workers, nginx master + workers), "
        "from `/proc/PID/smaps_rollup`. PSS shares each shared page among the processes mapping "
        "it, so PSS adds up; RSS counts shared pages once per process. *Under load*: the largest "
        "sample taken in the middle of an extra run (not counted in the rates) before the "
        "decision runs at 32 connections and before each endpoint's end-to-end runs. *Idle "
        "after the runs*: 3 s after the last run (token work). The target is judged on the "
        "larger of the two idle figures."
    )
    w("")
    w(
        "| component | idle RSS MB | idle PSS MB | under load RSS MB | under load PSS MB "
        "| idle after the runs RSS MB | idle after the runs PSS MB |"
    )
    w("|---|---|---|---|---|---|---|")
    nothing = (float("nan"),) * 2
    for name in COMPONENTS:
        figures = [results.memory.get((name, state), nothing) for state in MEMORY_STATES]
        w(f"| {name} | " + " | ".join(f"{rss:.0f} | {pss:.0f}" for rss, pss in figures) + " |")
    rss = {s: sum(results.memory.get((n, s), nothing)[0] for n in SERVICES) for s in MEMORY_STATES}
    pss = {s: sum(results.memory.get((n, s), nothing)[1] for n in SERVICES) for s in MEMORY_STATES}
    judged = max(pss["idle"], pss["after"])
    w(
        f"| **three services** | {rss['idle']:.0f} | **{pss['idle']:.0f}** | | "
        f"| {rss['after']:.0f} | **{pss['after']:.0f}** (≤ 150: {_mark(judged <= 150)}) |"
    )
    w("")
    w(
        "The target is judged on PSS: a gunicorn master and its forked workers share the "
        "pages loaded before the fork, and RSS would count them once per process. The "
        "three services idle, process by process:"
    )
    w("")
    w("| service | process | RSS MB | PSS MB |")
    w("|---|---|---|---|")
    seen: set[str] = set()
    for name, _pid, rss, pss in results.processes:
        role = "worker" if name in seen else "gunicorn master"
        seen.add(name)
        w(f"| {name} | {role} | {rss:.1f} | {pss:.1f} |")
    w("")

    w("### Targets")
    w("")
    w("| target | measured | |")
    w("|---|---|---|")
    for label, key, least in (
        ("webhook, every token new, 32 connections", ("webhook", "cold", 32), 4000),
        (
            "viewer path (nginx check), one token, every URI new, 32 connections",
            ("nginx check", "viewer", 32),
            8000,
        ),
        (
            "viewer path (nginx check), one token, one URI, 32 connections",
            ("nginx check", "warm", 32),
            8000,
        ),
    ):
        series = results.decisions.get(key)
        if series is None:
            continue
        rate = series.median()
        w(f"| {label} ≥ {least:,}/s | {rate:,.0f}/s | {_mark(rate >= least)} |")
        p99 = series.median("p99_ms")
        w(f"| … p99 ≤ 20 ms | {p99:.1f} ms | {_mark(p99 <= 20)} |")
    w("")
    return "\n".join(out)


COLD_TOKENS_TEXT = (
    "16,000 distinct tokens of 8 users, cycled: more than twice the policy's per-worker "
    "4,096-entry LRU, and a cycle lasts longer than nginx's 2 s"
)

COLD_TOKENS_TEXT_URIS = "16,000 URIs, cycled: a cycle lasts longer than nginx's 2 s"

HEADER = """# Benchmarks: what the security layer costs

Written by `make bench` (`python -m bench`): it starts its own stack in a
temporary STATE_DIR, loads a generated study, drives load with wrk from
separate processes on loopback and rewrites the measured section below.
`make bench` is not part of `make test`. Knobs (environment): `BENCH_RUNS`,
`BENCH_SECONDS`, `BENCH_CT_SLICES`, `BENCH_MULTIFRAMES`, `BENCH_FRAMES`,
`BENCH_UPLOADS`, `BENCH_TOKEN_CALLS`, `BENCH_OUTPUT`.

"""


def write_report(results: Results, target: Path) -> None:
    body = measured(results)
    if target.exists() and BEGIN in (text := target.read_text()) and END in text:
        before, rest = text.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
    else:
        before, after = HEADER, "\n"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"{before}{BEGIN}\n{body}\n{END}{after}")
