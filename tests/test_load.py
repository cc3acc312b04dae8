"""Bounded load on a stack of its own: 50 concurrent clients, mixed QIDO/WADO/STOW and tokens.

Every request goes through nginx (TLS, auth_request) on loopback. Expected:
zero errors, and every upload that was acknowledged (STOW answered 200) can be
read back afterwards. `make test` runs it for LOAD_SECONDS (default 15); the
longer run of docs/LOAD.md is

    LOAD_SECONDS=180 .venv/bin/pytest -q tests/test_load.py -s

`Traffic` (tests/support/traffic.py) is also what the fault tests in
tests/test_faults_stack.py run.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ADMIN_PASSWORD
from tests.support.stack import Stack
from tests.support.traffic import CLIENTS, Traffic

pytestmark = pytest.mark.stack

LOAD_SECONDS = float(os.environ.get("LOAD_SECONDS", "15"))


@pytest.fixture(scope="module")
def load_stack(tmp_path_factory: pytest.TempPathFactory, output_dir: Any) -> Iterator[Stack]:
    with Stack.started(tmp_path_factory.mktemp("load"), ADMIN_PASSWORD, output_dir) as running:
        yield running


def test_fifty_clients_mixed_traffic_no_errors_and_nothing_lost(load_stack):
    traffic = Traffic(load_stack)
    started = time.monotonic()
    outcome = traffic.run(LOAD_SECONDS)
    elapsed = time.monotonic() - started
    total = sum(outcome.counts.values())
    latencies = sorted(outcome.latencies)
    p50 = latencies[len(latencies) // 2] if latencies else 0
    p95 = latencies[int(len(latencies) * 0.95)] if latencies else 0
    print(
        f"\nload: {CLIENTS} clients, {elapsed:.0f}s, {total} requests ({total / elapsed:.0f}/s), "
        f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, {dict(outcome.counts)}, "
        f"{len(outcome.acknowledged)} uploads acknowledged, {len(outcome.errors)} errors"
    )
    assert outcome.errors == [], Counter(outcome.errors).most_common(10)
    assert outcome.counts["stow"] > 0 and outcome.counts["qido"] > 0
    assert traffic.missing(outcome.acknowledged) == []
