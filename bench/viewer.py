"""Time to first image in OHIF (Chromium): the whole stack against the same build without auth.

`python -m bench.viewer` (alone; `make bench` runs it last, into docs/BENCHMARKS.md). It starts a
stack (`make up`), a bare Orthanc and a second nginx made from the stack's rendered
nginx.conf (bench/environment.py's way) with one server: the stack's own, without
`auth_request`, proxied to the bare Orthanc, serving the same OHIF files with an
app-config.js of its own (no `oidc` block, DICOMweb root on that server). One study
of BENCH_VIEWER_SLICES (200) 512x512 CT slices (bench/study.py) goes into both Orthancs.

A run: a new tab in one browser context (the viewer's files cached, as for a user who
has opened it before; the provider's session cookie kept) opens
`/viewer/viewer?StudyInstanceUIDs=<uid>`; the time is until the viewport's canvas shows
the image (its pixels, tests/browser/ohif.py `wait_for_image`). On the stack a new
tab holds no OHIF user (sessionStorage is per tab): every run includes OHIF's redirect to
the provider, the provider's answer with a code (no form: the session), the code's
exchange and then the study's requests through nginx's check. One unmeasured run each
first, then BENCH_VIEWER_RUNS (5) each, alternating. The figure printed (and written to
BENCH_VIEWER_OUTPUT when set) is a Markdown section in docs/BENCHMARKS.md's style.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench.environment import BareOrthanc, _server_block
from bench.study import make_study
from infra.viewer import TEMPLATES, app_config_context
from services.domain.tokens import TokenCodec, TokenKind
from services.stores.accounts import identity
from tests.browser.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.support.nginx import NginxCopy, listen_on
from tests.support.processes import free_port
from tests.support.stack import Stack

ADMIN_PASSWORD = "Bench-Admin-Passw0rd!"  # noqa: S105 - a throw-away stack
USER_PASSWORD = "Bench-Viewer-Passw0rd!"  # noqa: S105
TARGET_RATIO = 1.15
CHECK_LINE = "            auth_request /_authorize;\n"
ZHIVA_PROXY = "            proxy_pass http://orthanc/;\n"


def say(message: str) -> None:
    print(f"[bench viewer {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class ViewerResults:
    slices: int
    runs: int
    started: str = ""
    # seconds to the first image, per run
    stack: list[float] = field(default_factory=list)
    noauth: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.stack) / statistics.median(self.noauth)


def render_noauth_app_config(settings: Any, base: str) -> str:
    """The stack's app-config.js, with its DICOMweb root on `base` and no sign-in."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    environment = Environment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - JavaScript; every value goes through `tojson`
    )
    context = {**app_config_context(settings), "dicomweb_root": f"{base}/zhiva/pacs", "oidc": None}
    return environment.get_template("viewer-app-config.js.j2").render(**context)


class NoAuthViewerNginx:
    """The stack's server block without its check, to the bare Orthanc, with its own
    app-config.js: the same OHIF build, the same TLS and nginx path, no authorization."""

    def __init__(self, stack: Stack, directory: Path, bare: BareOrthanc) -> None:
        self.port = free_port()
        self.base = f"https://localhost:{self.port}"
        self.app_config = directory / "app-config.js"
        directory.mkdir(parents=True, exist_ok=True)
        self.app_config.write_text(render_noauth_app_config(stack.settings, self.base))
        stack_config = Path(stack.env["STATE_DIR"]) / "viewer" / "app-config.js"
        bare_port = bare.port

        def servers(conf: str) -> str:
            head, block, tail = _server_block(conf)
            alias = f"alias {stack_config};"
            if block.count(CHECK_LINE) != 1 or block.count(ZHIVA_PROXY) != 1 or alias not in block:
                raise RuntimeError("nginx.conf changed shape: update bench/viewer.py")
            noauth = (
                listen_on(block, self.port)
                .replace(CHECK_LINE, "")
                .replace(ZHIVA_PROXY, "            proxy_pass http://orthanc_bare/;\n")
                .replace(alias, f"alias {self.app_config};")
            )
            upstream = (
                f"    upstream orthanc_bare {{ server 127.0.0.1:{bare_port}; keepalive 32; }}\n"
            )
            return head + upstream + noauth + tail

        self.nginx = NginxCopy(stack, directory, servers)

    def start(self) -> None:
        self.nginx.start(f"{self.base}/viewer/app-config.js")

    def stop(self) -> None:
        self.nginx.stop()


def first_image(context: Any, url: str, sign_in: tuple[str, str] | None = None) -> float:
    """Seconds from opening `url` in a new tab until the viewport shows the image."""
    from tests.browser.ohif import wait_for_image
    from tests.browser.provider import provider_sign_in

    page = context.new_page()
    try:
        started = time.monotonic()
        page.goto(url, wait_until="commit")
        if sign_in is not None:  # the first visit only: the provider's form
            page.wait_for_url(lambda u: "/auth/oauth/authorize?" in u, timeout=60_000)
            provider_sign_in(page, *sign_in)
            page.wait_for_url(url, timeout=60_000)
        wait_for_image(page, timeout=120)
        return time.monotonic() - started
    finally:
        page.close()


def measure(root: Path, slices: int, runs: int) -> ViewerResults:
    from playwright.sync_api import sync_playwright

    results = ViewerResults(slices, runs, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    stack = Stack.prepare(root / "stack", ADMIN_PASSWORD, root / "output")
    say(f"starting the stack (make up) in {root}")
    stack.up()
    bare = BareOrthanc(stack, root / "bare-orthanc")
    nginx: NoAuthViewerNginx | None = None
    try:
        bare.start()
        nginx = NoAuthViewerNginx(stack, root / "viewer-nginx", bare)
        nginx.start()
        codec = TokenCodec.from_settings(stack.settings, can_sign=True)
        admin = stack.create_user("bench-admin", USER_PASSWORD, can_edit=True, is_admin=True)
        stack.create_user("bench-viewer", USER_PASSWORD)
        token = codec.issue(TokenKind.ACCESS, identity(admin))[0]
        say(f"generating and storing {slices} CT slices in both Orthancs")
        study = make_study(ct_slices=slices, multiframes=0)
        with requests.Session() as direct:
            direct.trust_env = False
            for url, headers in ((stack.orthanc_url, {"token": token}), (bare.url, {})):
                for instance in study.instances:
                    direct.post(
                        f"{url}/instances", data=instance.data, headers=headers, timeout=120
                    ).raise_for_status()
        path = f"/viewer/viewer?StudyInstanceUIDs={study.uid}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            try:
                context = browser.new_context(
                    ignore_https_errors=True, viewport={"width": 1280, "height": 900}
                )
                sides = {"stack": stack.base_url + path, "noauth": nginx.base + path}
                warm = first_image(context, sides["stack"], sign_in=("bench-viewer", USER_PASSWORD))
                say(f"stack, signing in (not counted): {warm:.2f}s")
                say(f"no authorization (not counted): {first_image(context, sides['noauth']):.2f}s")
                for run in range(runs):
                    for side, url in sides.items():
                        seconds = first_image(context, url)
                        getattr(results, side).append(seconds)
                        say(f"run {run + 1} {side}: {seconds:.2f}s")
                context.close()
            finally:
                browser.close()
    finally:
        if nginx is not None:
            nginx.stop()
        bare.stop()
        stack.down()
    return results


def section(results: ViewerResults) -> str:
    def span(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} s ({min(values):.2f}–{max(values):.2f})"

    ok = "✅" if results.ratio <= TARGET_RATIO else "❌"
    return "\n".join(
        [
            "### OHIF: time to first image",
            "",
            f"Run of {results.started}: `python -m bench.viewer`, Debian's headless Chromium, "
            f"a study of {results.slices} CT slices (512x512), median of {results.runs} runs "
            "(min–max), each a new tab of one browser context. The stack's runs include "
            "OHIF's sign-in redirect (a provider session, no form) and the code exchange.",
            "",
            "| viewer | time to first image |",
            "|---|---|",
            f"| stack (OIDC sign-in, nginx check, Orthanc plugin) | {span(results.stack)} |",
            f"| same OHIF build, same nginx/TLS path, no authorization | {span(results.noauth)} |",
            f"| ratio stack / no authorization ≤ {TARGET_RATIO} | {results.ratio:.2f} {ok} |",
            "",
        ]
    )


def measure_section() -> str:
    """The whole measurement on a stack of its own, as a report section (`make bench`)."""
    slices = int(os.environ.get("BENCH_VIEWER_SLICES", "200"))
    runs = int(os.environ.get("BENCH_VIEWER_RUNS", "5"))
    with tempfile.TemporaryDirectory(prefix="zhiva-bench-viewer-") as directory:
        results = measure(Path(directory), slices, runs)
    say(json.dumps({"stack": results.stack, "noauth": results.noauth}))
    return section(results)


def main() -> int:
    text = measure_section()
    print(text)
    target = os.environ.get("BENCH_VIEWER_OUTPUT")
    if target:
        Path(target).write_text(text)
        say(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
