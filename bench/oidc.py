"""The OpenID Connect provider measured: its token endpoint, and decisions on its access tokens.

Part of `make bench` (bench/run.py calls `OidcBench` before the decision runs, which then
run each OIDC row right after the same zhiva row); alone, with the decision runs it is
compared with: `python -m bench.oidc` (a few minutes; `BENCH_RUNS`, `BENCH_SECONDS` as for
`make bench`; the section is printed, and written to `BENCH_OUTPUT` when that is set, never
to docs/BENCHMARKS.md).

- *Code exchange*: wrk posts `grant_type=authorization_code` to `/auth/oauth/token` through
  the stack's nginx, a new code per request (bench/lua/oidc_code.lua). Codes are single use
  and live 60 s, so each run gets its own, collected just before it: each user signs in once
  through the form (a `requests` session: CSRF token, Referer), then threads ask
  `/auth/oauth/authorize` with the session's `__Host-` cookie, which answers a 302 with a
  code at once. How many: twice what the best rate seen so far (a short run first, not
  counted) spends in the run's length, and 200 more. A run that runs out of codes is not
  counted (the notes say so) and is made again with twice as many.
- *Refresh*: `grant_type=refresh_token` with strict rotation (bench/lua/oidc_refresh.lua):
  each connection follows a family of its own, made by a code exchange before the run (two
  per user), and each answer's new refresh token is that family's next request.
- *Decisions*: the refresh answers' access tokens (more refresh runs, not counted, until
  there are COLD_TOKENS), exactly as the provider issues them, go through bench/run.py's
  decision runs beside the zhiva tokens, in the same `token` header.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import random
import re
import runpy
import secrets
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests

from bench.loads import Run, Series, cpu_seconds, wrk, wrk_threads
from services.domain.origins import OriginPolicy
from services.domain.tokens import TokenCodec, TokenKind
from services.settings import PROJECT_DIR
from services.stores.oauth_clients import add_client
from services.web.oidc import CODE_LIFETIME_SECONDS

if TYPE_CHECKING:
    from bench.run import Bench

CLIENT_ID = "zhiva-bench"
REDIRECT_URI = "https://localhost:8443/zhiva-bench/callback"
SCOPE = "openid profile offline_access"
TOKEN_PATH = "/auth/oauth/token"  # noqa: S105 - a path
AUTHORIZE_PATH = "/auth/oauth/authorize"
TOKEN_CONNECTIONS = 16
GRANT_NAMES = {"authorization_code": "code exchange", "refresh_token": "refresh"}
# Threads asking for codes, one session (and user) each.
CODE_WORKERS = 8
# Codes per run: the best rate seen, for the run's length, times this, plus CODE_EXTRA.
CODE_MARGIN = 2.0
CODE_EXTRA = 200
# The first exchange run, not counted: a rate to size the counted runs' codes by.
CALIBRATION_CODES = 1000
CALIBRATION_SECONDS = 2.0
# A run that ran out of codes is made again, with twice as many, this many times at most.
CODE_ATTEMPTS = 2
# A run's codes are all collected, then spent: the first must outlive the run.
CODE_SLACK_SECONDS = 8
# Whose CPU time is read around each token run (the stack's processes a token goes through).
TOKEN_COMPONENTS = ("token", "nginx", "redis")
SIGNATURES = 200  # RS256 signatures timed in this process (what a token costs to sign)
CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


@dataclass
class OidcResults:
    tokens: dict[str, Series] = field(default_factory=dict)  # by grant
    token_cores: dict[str, list[float]] = field(default_factory=dict)  # token service CPU / s
    # By grant, each counted run's CPU µs per token of each of TOKEN_COMPONENTS.
    token_cpu: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    codes: list[int] = field(default_factory=list)  # codes made for each counted exchange run
    codes_sent: list[int] = field(default_factory=list)  # and how many of them were sent
    codes_per_second: list[float] = field(default_factory=list)  # /auth/oauth/authorize
    decisions: dict[tuple[str, str, int], Series] = field(default_factory=dict)
    load_before: str = ""
    load_after: str = ""
    token_workers: str = ""
    signature_us: float = float("nan")
    token_chars: tuple[int, int] = (0, 0)  # zhiva, OIDC access token
    cold_users: int = 0
    cold_tokens: int = 0
    minted_runs: int = 0  # refresh runs made only to mint cold tokens
    notes: list[str] = field(default_factory=list)


@dataclass
class TokenRun:
    run: Run
    stats: dict[str, int]  # the Lua script's counts: sent, short, kept
    cores: float  # the token service's CPU seconds per second of the run
    cpu_us: dict[str, float]  # CPU µs per 2xx answer, by component


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def code_of(location: str) -> str:
    return parse_qs(urlsplit(location).query)["code"][0]


def claims_of(token: str) -> dict[str, Any]:
    """A JWT's payload, unverified (the policy verifies; this only sorts tokens by user)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def loadavg() -> str:
    from bench.run import loadavg as read  # bench.run imports this module

    return read()


def say(message: str) -> None:
    from bench.run import say as bench_say

    bench_say(message)


class OidcBench:
    """The provider's side of the bench, on a started `Bench` (its stack, users, knobs)."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.stack = bench.stack
        self.knobs = bench.knobs
        self.results: OidcResults = bench.results.oidc
        self.base = self.stack.base_url
        self.directory = bench.root / "oidc"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.verifier, challenge = pkce_pair()
        query = {
            "response_type": "code",
            "client_id": CLIENT_ID,
            "redirect_uri": REDIRECT_URI,
            "scope": SCOPE,
            "state": "bench",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        self.authorize_url = f"{self.base}{AUTHORIZE_PATH}?{urlencode(query)}"
        self.sessions: list[requests.Session] = []
        self.access_tokens: list[str] = []  # from refresh answers, for the cold decisions
        self.warm_token = ""
        self.cold_file = self.directory / "cold-tokens.txt"
        self.best_rate = 0.0  # code exchanges/s, the best seen: sizes each run's codes
        self.refresh_rate = 0.0

    # ----------------------------------------------------------- set-up

    def register_client(self) -> None:
        policy = OriginPolicy(self.stack.settings.origin_patterns)
        with self.stack.database().session() as session:
            add_client(session, CLIENT_ID, [REDIRECT_URI], [], False, policy)

    def session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE would replace `verify`
        session.verify = self.stack.ca_file
        return session

    def sign_in(self, username: str, password: str) -> requests.Session:
        """A browser's provider session: the form once, as a person fills it in."""
        session = self.session()
        page = session.get(self.authorize_url, timeout=30)
        found = CSRF.search(page.text)
        if page.status_code != 200 or not found:
            raise RuntimeError(f"authorize page answered {page.status_code}: {page.text[:300]}")
        answer = session.post(
            self.authorize_url,
            data={"username": username, "password": password, "csrf_token": found.group(1)},
            headers={"Referer": self.authorize_url, "Origin": self.base},
            allow_redirects=False,
            timeout=30,
        )
        if answer.status_code != 302 or not answer.headers["Location"].startswith(REDIRECT_URI):
            raise RuntimeError(f"sign-in answered {answer.status_code}: {answer.text[:300]}")
        return session

    def start(self, users: list[Any], password: str) -> None:
        self.register_client()
        self.sessions = [self.sign_in(user.username, password) for user in users]
        self.results.cold_users = len(users)
        self.results.token_workers = self.token_workers()
        self.results.signature_us = self.signature_us()

    def token_workers(self) -> str:
        """How the token service runs: gunicorn's workers, worker class and threads, read from
        its master's command line and environment (infra/render.py, infra/gunicorn.conf.py)."""
        master = self.bench.load_pids["token"]
        argv = Path(f"/proc/{master}/cmdline").read_bytes().decode().split("\0")
        environ = Path(f"/proc/{master}/environ").read_bytes().decode().split("\0")
        set_here = [e.split("=", 1)[1] for e in environ if e.startswith("GUNICORN_THREADS=")]
        conf = PROJECT_DIR / "infra" / "gunicorn.conf.py"
        threads = set_here[0] if set_here else str(runpy.run_path(str(conf))["threads"])

        def option(name: str) -> str:
            return argv[argv.index(name) + 1] if name in argv else "?"

        return (
            f"{option('--workers')} gunicorn worker(s), {option('--worker-class')}, "
            f"{threads} threads each"
        )

    def signature_us(self) -> float:
        """µs per RS256 signature with the stack's key here (the provider signs an access
        token per grant, and an ID token per code exchange)."""
        codec = TokenCodec.from_settings(self.stack.settings, can_sign=True)
        who = self.bench.viewers[0]
        start = time.perf_counter()
        for _ in range(SIGNATURES):
            codec.issue(TokenKind.ACCESS, who)
        return (time.perf_counter() - start) / SIGNATURES * 1e6

    # ----------------------------------------------------------- codes and families

    def collect_codes(self, count: int) -> list[str]:
        """`count` new codes, asked for by CODE_WORKERS threads (one user's session each),
        oldest first, so the first spent are the first to expire."""
        workers = min(CODE_WORKERS, max(1, count))
        shares = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]

        def fetch(worker: int, share: int) -> list[str]:
            codes = []
            with self.session() as session:
                session.cookies.update(self.sessions[worker % len(self.sessions)].cookies)
                for _ in range(share):
                    answer = session.get(self.authorize_url, allow_redirects=False, timeout=30)
                    if answer.status_code != 302:
                        raise RuntimeError(f"authorize answered {answer.status_code}")
                    codes.append(code_of(answer.headers["Location"]))
            return codes

        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            lists = list(pool.map(fetch, range(workers), shares))
        if count >= 100:  # a rate worth reporting
            self.results.codes_per_second.append(count / (time.perf_counter() - start))
        # Round-robin over the threads: about the order they were made in.
        longest = max(len(codes) for codes in lists)
        return [codes[i] for i in range(longest) for codes in lists if i < len(codes)]

    def exchange(self, session: requests.Session, code: str) -> dict[str, Any]:
        answer = session.post(
            self.base + TOKEN_PATH,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT_URI,
                "client_id": CLIENT_ID,
                "code_verifier": self.verifier,
            },
            timeout=30,
        )
        if answer.status_code != 200:
            raise RuntimeError(f"code exchange answered {answer.status_code}: {answer.text}")
        return answer.json()

    def families(self, count: int) -> list[str]:
        """`count` new refresh-token families (code exchanges spread over the users): the
        first refresh token of each."""
        codes = self.collect_codes(count)
        with self.session() as session:
            answers = [self.exchange(session, code) for code in codes]
        if not self.warm_token:
            first = self.bench.viewers[0].username
            self.warm_token = next(
                a["access_token"]
                for a in answers
                if claims_of(a["access_token"])["preferred_username"] == first
            )
        return [a["refresh_token"] for a in answers]

    # ----------------------------------------------------------- wrk runs

    def token_run(self, script: str, env: dict[str, str], seconds: float) -> TokenRun:
        """One wrk run at the token endpoint. Its Run's rate counts 2xx answers only, its
        cpu_us is the token service's CPU per 2xx answer."""
        stats_file = self.directory / "stats.json"
        stats_file.unlink(missing_ok=True)
        pids = {name: self.bench.load_pids[name] for name in TOKEN_COMPONENTS}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        start = time.perf_counter()
        run_ = wrk(
            self.base,
            script,
            connections=TOKEN_CONNECTIONS,
            seconds=seconds,
            env={
                "BENCH_PATH": TOKEN_PATH,
                "BENCH_CLIENT_ID": CLIENT_ID,
                "BENCH_THREADS": str(wrk_threads(TOKEN_CONNECTIONS)),
                "BENCH_STATS": str(stats_file),
                **env,
            },
        )
        elapsed = time.perf_counter() - start
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        stats = json.loads(stats_file.read_text())
        good = run_.requests - run_.errors
        duration = run_.requests / run_.rate if run_.rate else float("nan")
        run_.rate = good / duration if good else 0.0
        run_.requests = good
        per_token = {name: used / max(1, good) * 1e6 for name, used in cpu.items()}
        run_.cpu_us = per_token["token"]
        return TokenRun(run_, stats, cpu["token"] / elapsed, per_token)

    def exchange_run(self, count: int, seconds: float) -> TokenRun:
        codes_file = self.directory / "codes.txt"
        codes_file.write_text("\n".join(self.collect_codes(count)) + "\n")
        env = {
            "BENCH_CODES": str(codes_file),
            "BENCH_VERIFIER": self.verifier,
            "BENCH_REDIRECT_URI": REDIRECT_URI,
        }
        return self.token_run("oidc_code.lua", env, seconds)

    def code_budget(self, seconds: float) -> int:
        """The most codes that can be collected before the first of them would expire
        during a run of `seconds`."""
        collect_rate = max(self.results.codes_per_second or [100.0])
        budget = CODE_LIFETIME_SECONDS - max(1, round(seconds)) - CODE_SLACK_SECONDS
        return max(100, int(collect_rate * budget))

    def codes_for(self, seconds: float) -> int:
        """Codes for a run of `seconds` at the best rate seen, within the budget."""
        wanted = math.ceil(self.best_rate * max(1, round(seconds)) * CODE_MARGIN) + CODE_EXTRA
        return min(wanted, self.code_budget(seconds))

    def record(self, grant: str, done: TokenRun) -> None:
        self.results.tokens.setdefault(grant, Series()).runs.append(done.run)
        self.results.token_cores.setdefault(grant, []).append(done.cores)
        self.results.token_cpu.setdefault(grant, []).append(done.cpu_us)

    def exchange_runs(self) -> None:
        knobs, results = self.knobs, self.results
        results.tokens.setdefault("authorization_code", Series())
        calibration = self.exchange_run(CALIBRATION_CODES, CALIBRATION_SECONDS)
        self.best_rate = calibration.run.rate
        say(f"oidc code exchange, first run (not counted): {self.best_rate:.0f}/s")
        for number in range(1, knobs.runs + 1):
            count = self.codes_for(knobs.seconds)
            for attempt in range(1, CODE_ATTEMPTS + 1):
                done = self.exchange_run(count, knobs.seconds)
                run_, stats = done.run, done.stats
                if not stats["short"]:
                    break
                # Its rate is wrong (the requests without a code were refused, quickly):
                # not counted, and the next attempt has twice the codes.
                results.notes.append(
                    f"Code exchange run {number} (attempt {attempt}) ran out of its "
                    f"{count:,} codes ({stats['short']:,} requests without one): not counted."
                )
                say(f"oidc code exchange run {number}: out of {count:,} codes, not counted")
                self.best_rate = max(self.best_rate, count / max(1, round(knobs.seconds)))
                count = min(2 * count, self.code_budget(knobs.seconds))
            else:
                continue
            self.best_rate = max(self.best_rate, run_.rate)
            self.record("authorization_code", done)
            results.codes.append(count)
            results.codes_sent.append(stats["sent"])
            say(
                f"oidc code exchange run {number}: {run_.rate:.0f}/s p99 {run_.p99_ms:.1f} ms "
                f"errors {run_.errors}, {stats['sent']:,} of {count:,} codes sent"
            )

    def refresh_run(self, seconds: float) -> TokenRun:
        """A refresh run of new families; each answer's access token is kept."""
        families_file = self.directory / "families.txt"
        families_file.write_text("\n".join(self.families(TOKEN_CONNECTIONS)) + "\n")
        save_to = self.directory / "access"
        env = {"BENCH_REFRESH": str(families_file), "BENCH_SAVE": str(save_to)}
        done = self.token_run("oidc_refresh.lua", env, seconds)
        for thread in range(1, wrk_threads(TOKEN_CONNECTIONS) + 1):
            part = save_to.with_name(f"{save_to.name}.{thread}")
            if part.exists():
                self.access_tokens += part.read_text().split()
                part.unlink()
        return done

    def refresh_runs(self) -> None:
        knobs, results = self.knobs, self.results
        results.tokens.setdefault("refresh_token", Series())
        for number in range(1, knobs.runs + 1):
            done = self.refresh_run(knobs.seconds)
            run_ = done.run
            if done.stats["short"]:
                # An error lost a family's answer, so its connection had nothing to send.
                results.notes.append(
                    f"Refresh run {number}: {done.stats['short']:,} requests without a refresh "
                    "token (a family's answer lost to an error)."
                )
            self.record("refresh_token", done)
            say(
                f"oidc refresh run {number}: {run_.rate:.0f}/s p99 {run_.p99_ms:.1f} ms "
                f"errors {run_.errors}, {len(self.access_tokens):,} access tokens kept"
            )
        series = results.tokens["refresh_token"]
        self.refresh_rate = series.median() if series.runs else 0.0

    def mint_cold_tokens(self, count: int) -> None:
        """Refresh runs, not counted, until there are `count` access tokens; the cold file."""
        while len(self.access_tokens) < count:
            missing = count - len(self.access_tokens)
            seconds = min(60, max(2, math.ceil(missing / max(50.0, self.refresh_rate) * 1.2)))
            done = self.refresh_run(seconds)
            self.refresh_rate = max(self.refresh_rate, done.run.rate)
            self.results.minted_runs += 1
            say(f"oidc: {len(self.access_tokens):,} access tokens for the cold runs")
        tokens = self.access_tokens[:count]
        random.Random(0).shuffle(tokens)  # noqa: S311 - the users' tokens mixed, as zhiva's are
        self.cold_file.write_text("\n".join(tokens) + "\n")
        self.results.cold_tokens = len(tokens)
        self.results.cold_users = len({claims_of(t)["preferred_username"] for t in tokens})

    def check_tokens(self) -> None:
        """The OIDC tokens the decision runs use are granted, so their error count means
        something (as bench/run.py's check_answers does for the zhiva ones)."""
        check = f"https://localhost:{self.bench.nginx.check_port}/zhiva/system"
        some = random.Random(1).sample(self.access_tokens, 5)  # noqa: S311 - a sample
        sample = [self.warm_token, *some]
        for token in sample:
            status = self.bench.http.get(check, headers={"token": token}, timeout=30).status_code
            if status != 200:
                raise RuntimeError(f"an OIDC access token was answered {status}")

    # ----------------------------------------------------------- all

    def token_endpoint(self, cold_tokens: int) -> None:
        """Sign-ins, the exchange and refresh runs, then the cold decision tokens."""
        from bench.run import USER_PASSWORD

        results = self.results
        results.load_before = loadavg()
        say("oidc: signing in through the provider's form, one session per user")
        self.start(self.bench.viewers, USER_PASSWORD)
        self.exchange_runs()
        self.refresh_runs()
        results.load_after = loadavg()
        self.mint_cold_tokens(cold_tokens)
        self.check_tokens()
        zhiva_token = self.bench.viewer_token
        results.token_chars = (len(zhiva_token), len(self.warm_token))

    def token_env(self, state: str) -> dict[str, str]:
        """What replaces the zhiva token in a decision run's wrk environment."""
        if state == "cold":
            return {"BENCH_TOKENS": str(self.cold_file)}
        return {"BENCH_TOKEN": self.warm_token}


def main() -> int:
    """The stack, the OIDC runs and the decision runs they are compared with; no end-to-end,
    upload, token-work or memory runs."""
    from bench.report import oidc_section
    from bench.run import Bench, Knobs

    knobs = Knobs()
    # The study only names the decision runs' URIs (the check serves an empty file).
    for name, small in (("ct_slices", 10), ("multiframes", 1), ("frames", 2)):
        if f"BENCH_{name.upper()}" not in os.environ:
            setattr(knobs, name, small)
    target = os.environ.get("BENCH_OUTPUT")
    if target and Path(target).resolve() == Path("docs/BENCHMARKS.md").resolve():
        print("BENCH_OUTPUT: a partial run does not rewrite docs/BENCHMARKS.md", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="zhiva-bench-oidc-") as directory:
        bench = Bench(Path(directory), knobs)
        results = bench.results
        results.started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        results.load_before = loadavg()
        bench.start()
        try:
            bench.load_study()
            bench.versions()
            bench.load_pids = bench.pids()
            bench.oidc_runs()
            bench.decisions()
        except Exception:
            bench.say_logs()
            raise
        finally:
            results.load_after = loadavg()
            bench.stop()
    text = oidc_section(results)
    print(text)
    if target:
        Path(target).write_text(text + "\n")
        say(f"wrote {target}")
    return 0


if __name__ == "__main__":
    from bench.oidc import main as imported_main  # one copy of the module, as bench.run's

    raise SystemExit(imported_main())
