"""docs/BENCHMARKS.md from one bench run: every figure, median of the runs with min-max beside it.

The measured part is between the BEGIN/END markers; what is written around it
by hand (analysis, targets missed and why) is kept when the file is rewritten.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from bench.loads import Series
from bench.oidc import (
    CALIBRATION_SECONDS,
    CODE_EXTRA,
    CODE_MARGIN,
    CODE_WORKERS,
    GRANT_NAMES,
    TOKEN_COMPONENTS,
    TOKEN_CONNECTIONS,
)
from bench.run import COMPONENTS, E2E_CONNECTIONS, SERVICES, Results

# The memory table's columns: at start-up, under load, and idle again after every run.
MEMORY_STATES = ("idle", "load", "after")

BEGIN = "<!-- BEGIN MEASURED (written by `make bench`; edit outside these markers) -->"
END = "<!-- END MEASURED -->"

# The OpenID Connect provider's targets: grants per second at the token endpoint, and its
# access tokens' decisions against zhiva's (OIDC / zhiva, judged at this many connections).
OIDC_TOKEN_TARGET = 1000
OIDC_DECISION_RATIO = 0.90
OIDC_JUDGED_CONNECTIONS = 32

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

    w(oidc_section(results))
    w("")
    # Share tokens and the OHIF viewer, each measured on a stack of its own (bench/shares.py,
    # bench/viewer.py) after the runs above.
    for section in results.sections:
        w(section)
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


def oidc_section(results: Results) -> str:
    """Section 6: the OpenID Connect provider's token endpoint, and decisions on its access
    tokens beside zhiva's (bench/oidc.py)."""
    o = results.oidc
    out: list[str] = []
    w = out.append
    w("### 6. OpenID Connect provider")
    w("")
    w(
        f"{results.versions.get('CPU', '?')}; load average (1, 5, 15 min) before the token "
        f"endpoint's runs: {o.load_before}, after: {o.load_after}. Token service: "
        f"{o.token_workers or '?'}. An RS256 signature with the stack's key takes "
        f"{o.signature_us:,.0f} µs in the bench's own process (a code exchange signs an access "
        "token and an ID token, a refresh an access token)."
    )
    w("")
    w(
        f"`POST /auth/oauth/token` through the stack's nginx/TLS, wrk, {TOKEN_CONNECTIONS} "
        "connections, a public client with PKCE (S256). *Code exchange*: a new code per "
        "request (codes are single use and live 60 s). Before each run each user's browser "
        "session (signed in once through the form) asks `/auth/oauth/authorize` for codes, "
        f"{CODE_WORKERS} threads, as many as the best rate seen (a {CALIBRATION_SECONDS:g}-s "
        f"run first, not counted) for the run's length, times {CODE_MARGIN:g}, plus "
        f"{CODE_EXTRA}; a run that runs out is not counted and made again with twice as many "
        "(notes below). *Refresh*: strict rotation, each connection follows a family of its "
        "own (16 code exchanges, 2 per user, before each run): each answer's new refresh "
        "token is its family's next request. *Rates count 2xx answers only*; errors are "
        "non-2xx answers and socket errors. *Token CPU*: user + system time of the token "
        "service's processes over the run, per token; *cores*: that time per second of run."
    )
    w("")
    w(
        "| grant | tokens/s | p50 ms | p99 ms | errors | token CPU µs per token | cores "
        f"| target ≥ {OIDC_TOKEN_TARGET:,}/s |"
    )
    w("|---|---|---|---|---|---|---|---|")
    for grant, series in o.tokens.items():
        if not series.runs:
            w(f"| {GRANT_NAMES[grant]} | no run counted | | | | | | |")
            continue
        rate = series.median()
        cores = o.token_cores.get(grant, [])
        w(
            f"| {GRANT_NAMES[grant]} | {_rate(series)} | {_ms(series, 'p50_ms')} | "
            f"{_ms(series, 'p99_ms')} | {series.errors} | {_rate(series, 'cpu_us')} | "
            f"{_median(cores):.2f} | {_mark(rate >= OIDC_TOKEN_TARGET)} |"
        )
    w("")
    for grant, runs in o.token_cpu.items():
        split = ", ".join(
            f"{name} {_median([run[name] for run in runs]):,.0f} µs" for name in TOKEN_COMPONENTS
        )
        w(f"CPU per {GRANT_NAMES[grant]} (medians): {split}.")
        w("")
    if o.codes:
        made = ", ".join(f"{n:,} / {sent:,}" for n, sent in zip(o.codes, o.codes_sent, strict=True))
        w(
            f"Codes made / sent per counted exchange run: {made}; `/auth/oauth/authorize` with "
            f"a session gave {_median(o.codes_per_second):,.0f} codes/s while they were made."
        )
        w("")
    zhiva_chars, oidc_chars = o.token_chars
    w(
        "Decisions: the runs of section 1, each beside the same run with the provider's "
        "access tokens in the same `token` header (zhiva first, then OIDC first, in turn). "
        f"*Cold*: {o.cold_tokens:,} "
        f"distinct access tokens of {o.cold_users} users, the refresh runs' answers (and "
        f"{o.minted_runs} more refresh run{'' if o.minted_runs == 1 else 's'}, not counted, "
        "to make up the number), cycled as "
        f"the zhiva ones; *warm* and *viewer*: one access token. An OIDC access token is "
        f"{oidc_chars:,} characters, a zhiva one {zhiva_chars:,}. Ratio: OIDC / zhiva of the "
        "medians; policy CPU as in section 1."
    )
    w("")
    w(
        "| target | caches | connections | zhiva decisions/s | OIDC decisions/s | OIDC / zhiva "
        "| zhiva p99 ms | OIDC p99 ms | OIDC errors | policy CPU µs, zhiva | policy CPU µs, OIDC "
        "| policy CPU, OIDC / zhiva |"
    )
    w("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key, oidc in o.decisions.items():
        zhiva = results.decisions[key]
        target, state, connections = key
        w(
            f"| {target} | {state} | {connections} | {_rate(zhiva)} | {_rate(oidc)} | "
            f"{_ratio(oidc.median() / zhiva.median())} | {_ms(zhiva, 'p99_ms')} | "
            f"{_ms(oidc, 'p99_ms')} | {oidc.errors} | {_rate(zhiva, 'cpu_us')} | "
            f"{_rate(oidc, 'cpu_us')} | {_cpu_ratio(oidc, zhiva)} |"
        )
    w("")
    w("| target | measured | |")
    w("|---|---|---|")
    for grant, series in o.tokens.items():
        if series.runs:
            rate = series.median()
            w(
                f"| {GRANT_NAMES[grant]}, {TOKEN_CONNECTIONS} connections, ≥ "
                f"{OIDC_TOKEN_TARGET:,}/s | {rate:,.0f}/s | {_mark(rate >= OIDC_TOKEN_TARGET)} |"
            )
    for key, oidc in o.decisions.items():
        target, state, connections = key
        if connections != OIDC_JUDGED_CONNECTIONS:
            continue
        ratio = oidc.median() / results.decisions[key].median()
        w(
            f"| {target}, {state}, {connections} connections: OIDC / zhiva ≥ "
            f"{OIDC_DECISION_RATIO:.2f} | {_ratio(ratio)} | "
            f"{_mark(ratio >= OIDC_DECISION_RATIO)} |"
        )
    if o.notes:
        w("")
        for note in o.notes:
            w(f"- {note}")
    return "\n".join(out)


def _cpu_ratio(oidc: Series, zhiva: Series) -> str:
    """OIDC / zhiva of the policy's CPU per decision; "–" where nginx answered (about 0 µs)."""
    if zhiva.median("cpu_us") < 20:
        return "–"
    return f"{oidc.median('cpu_us') / zhiva.median('cpu_us'):.2f}"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


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
