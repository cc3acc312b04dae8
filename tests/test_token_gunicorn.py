"""Redemption under real concurrency: gunicorn with several worker processes, one Redis.

Exactly one of 50 simultaneous redemptions of one auth token may win, whichever
worker each lands on: the SET NX in Redis is the only arbiter.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from services.domain.auth_tokens import auth_token_claims
from services.domain.tokens import TokenCodec, TokenKind
from services.domain.user import UserRecord
from services.settings import load_settings
from services.stores.accounts import identity
from services.stores.db import Database
from services.stores.models import User
from tests.support.processes import free_port, start_gunicorn, wait_until

CONCURRENT = 50
ROUNDS = 5
WORKERS = 3


@pytest.fixture
def gunicorn(app_config, tmp_path):
    port = free_port()
    env = {**os.environ, **{k: str(v) for k, v in app_config.items() if k != "TESTING"}}
    log = (tmp_path / "gunicorn.log").open("wb")
    env.update(GUNICORN_BIND=f"127.0.0.1:{port}", GUNICORN_WORKERS=str(WORKERS))
    process = start_gunicorn(
        "services.token_service:create_app()",
        env=env,
        log=log,
        # The deployment's own settings (threaded workers, the app loaded in each), with each access
        # line naming the worker's pid, to see who answered, and no control socket: its
        # default path is shared by every gunicorn of the user.
        options=(
            "--access-logformat",
            "access pid=%(p)s status=%(s)s path=%(U)s",
            "--no-control-socket",
        ),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: requests.get(f"{base}/healthz", timeout=2).status_code == 200,
            30,
            "gunicorn token service",
        )
        yield base, tmp_path / "gunicorn.log"
    finally:
        process.terminate()
        process.wait(15)
        log.close()


def _seed_user(settings: Any, username: str, *, can_edit: bool) -> UserRecord:
    """A user row written straight to the database (no bcrypt: these tests never sign in)."""
    database = Database(settings.database_url)
    try:
        with database.session() as session:
            user = User(
                name=username.title(),
                username=username,
                password_hash="x",
                can_edit=can_edit,
                is_admin=False,
                disabled=False,
                token_generation=0,
            )
            session.add(user)
            session.flush()
            return identity(user)
    finally:
        database.engine.dispose()


def test_fifty_concurrent_redemptions_exactly_one_wins(app_config, gunicorn):
    base, log_path = gunicorn
    settings = load_settings(app_config)
    who = _seed_user(settings, "ann", can_edit=False)
    codec = TokenCodec.from_settings(settings, can_sign=True)

    def race(token: str) -> list[tuple[int, str | None, str]]:
        barrier = threading.Barrier(CONCURRENT)

        def redeem(_: int) -> tuple[int, str | None, str]:
            with requests.Session() as http:
                barrier.wait()
                response = http.post(
                    f"{base}/auth/generate-access-token",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=30,
                )
                return response.status_code, response.headers.get("Authorization"), response.text

        with ThreadPoolExecutor(CONCURRENT) as pool:
            return list(pool.map(redeem, range(CONCURRENT)))

    # Which worker accepts a connection is the kernel's choice: a round may, by chance, land
    # on one worker only. Every round must have exactly one winner; rounds go on (a few at
    # most) until one has really been spread over several worker processes.
    spread = False
    for _round in range(ROUNDS):
        token, _ = codec.issue(TokenKind.AUTH, who, extra=auth_token_claims(settings))
        log_start = log_path.stat().st_size
        results = race(token)

        statuses = Counter(status for status, _, _ in results)
        assert statuses == {200: 1, 403: CONCURRENT - 1}
        (winner,) = [r for r in results if r[0] == 200]
        codec.verify(winner[1].removeprefix("Bearer "), TokenKind.ACCESS)
        codec.verify(winner[2], TokenKind.REFRESH)
        losers = [r for r in results if r[0] == 403]
        assert all(r[1] is None and '"Invalid Token"' in r[2] for r in losers)
        with log_path.open() as log:
            log.seek(log_start)
            served_by = set(
                re.findall(
                    r"access pid=<?(\d+)>? status=\d+ path=/auth/generate-access-token",
                    log.read(),
                )
            )
        if len(served_by) >= 2:
            spread = True
            break
    assert spread, f"no round of {CONCURRENT} redemptions reached two workers in {ROUNDS} rounds"


def test_gunicorn_workers_survive_redis_restart_and_outage(app_config, gunicorn, redis_server):
    base, _ = gunicorn
    settings = load_settings(app_config)
    who = _seed_user(settings, "bob", can_edit=True)
    codec = TokenCodec.from_settings(settings, can_sign=True)

    def redeem(token: str) -> requests.Response:
        return requests.post(
            f"{base}/auth/generate-access-token",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    used, _ = codec.issue(TokenKind.AUTH, who)
    assert redeem(used).status_code == 200
    redis_server.restart()
    # Every worker, whatever its pooled connections, still refuses the used token.
    for _ in range(2 * WORKERS):
        response = redeem(used)
        assert (response.status_code, response.json()) == (403, {"message": "Invalid Token"})

    fresh, _ = codec.issue(TokenKind.AUTH, who)
    redis_server.stop()
    try:
        for _ in range(2 * WORKERS):
            response = redeem(fresh)
            assert response.status_code == 503
            assert "Authorization" not in response.headers
    finally:
        redis_server.start()
    assert redeem(fresh).status_code == 200
