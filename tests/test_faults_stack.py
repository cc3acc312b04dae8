"""Faults on a stack of this module's own: each one fails closed, then recovers by itself.

The shared session stack is never touched. Tests run in file order on one
stack; the power cut is last. During a fault, refusals are expected; what must
never happen is a grant to a token that should not get one, a 500 from our
services, or the loss of anything that was acknowledged.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

from infra.setup import _tls_certificate
from services.domain.auth_tokens import issue_auth_token
from services.domain.tokens import TokenCodec, TokenKind
from services.stores.accounts import find_user, identity
from services.stores.revocation import MAX_LAG_SECONDS, RevocationStore
from tests.conftest import ADMIN_PASSWORD
from tests.support.processes import wait_until
from tests.support.stack import Stack
from tests.support.traffic import Traffic

pytestmark = pytest.mark.stack

USER_PASSWORD = "Fault-Passw0rd!"


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory, output_dir: Path) -> Iterator[Stack]:
    with Stack.started(tmp_path_factory.mktemp("faults"), ADMIN_PASSWORD, output_dir) as running:
        yield running


@pytest.fixture(scope="module")
def traffic(fault_stack: Stack) -> Traffic:
    # Fewer clients than the load test: the faults, not the load, are under test here.
    return Traffic(fault_stack, clients=10, tolerate=True)


def qido(stack: Stack, token: str) -> int:
    with stack.http() as http:
        try:
            return http.get(
                f"{stack.base_url}/zhiva/pacs/studies", headers={"token": token}, timeout=20
            ).status_code
        except requests.ConnectionError:
            return 0


def fresh_access(traffic: Traffic) -> str:
    """An access token never seen before (nothing about it can be cached)."""
    return traffic.codec.issue(TokenKind.ACCESS, traffic.editor)[0]


def recovered(stack: Stack, traffic: Traffic, seconds: float = 3) -> None:
    """Back to normal by itself: a clean run of mixed traffic, nothing acknowledged lost."""
    wait_until(lambda: qido(stack, fresh_access(traffic)) == 200, 45, "PACS access")
    clean = Traffic(stack, clients=10)
    outcome = clean.run(seconds)
    assert outcome.errors == [], outcome.errors[:10]
    acknowledged = traffic.outcome.acknowledged + outcome.acknowledged
    assert clean.missing(acknowledged) == []


def program_pids(stack: Stack, program: str) -> list[int]:
    """The program's main pid and every descendant."""
    result = stack.supervisorctl("pid", program)
    main = int(result.stdout.strip())
    return [main, *descendants(main)]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


# ------------------------------------------------------------------ SQLite writers


def test_fifty_parallel_account_writes_on_sqlite_no_500(fault_stack):
    """50 generate-token calls at once (each creates or overwrites a user): none fails."""
    body = {
        "name": "Parallel",
        "password": ADMIN_PASSWORD,
        "userPassword": USER_PASSWORD,
        "createUserIfNotExists": True,
    }

    def create(index: int) -> tuple[int, str]:
        # 40 distinct users and 10 writers racing on one username (create vs overwrite).
        username = f"parallel-{index}" if index < 40 else "parallel-shared"
        with fault_stack.http() as http:
            r = http.post(
                f"{fault_stack.base_url}/auth/generate-token",
                json={**body, "username": username},
                timeout=120,
            )
            return r.status_code, r.text[:200]

    started = time.monotonic()
    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(create, range(50)))
    elapsed = time.monotonic() - started
    print(f"\n50 parallel account writes: {elapsed:.1f}s")
    failures = [r for r in results if r[0] != 200]
    # A unique-username race may be refused cleanly (4xx), never a 500.
    assert not [r for r in failures if r[0] >= 500], failures
    assert len(failures) <= 9, failures
    with fault_stack.database().session() as session:
        for index in range(40):
            assert find_user(session, f"parallel-{index}") is not None
        assert find_user(session, "parallel-shared") is not None
        assert session.scalar(text("PRAGMA integrity_check")) == "ok"


# ------------------------------------------------------------------ Redis stopped


def test_redis_stopped_mid_traffic_fails_closed_then_recovers(fault_stack, traffic):
    codec, settings = traffic.codec, fault_stack.settings
    traffic.start()
    try:
        time.sleep(2)
        assert fault_stack.supervisorctl("stop", "redis").returncode == 0
        try:
            time.sleep(1)
            auth_token, _ = issue_auth_token(codec, settings, traffic.editor)
            with fault_stack.http() as http:
                redeem = http.post(
                    f"{fault_stack.base_url}/auth/generate-access-token",
                    headers={"Authorization": f"Bearer {auth_token}"},
                    timeout=30,
                )
                refresh = http.post(
                    f"{fault_stack.base_url}/auth/refresh-token",
                    headers={"Authorization": f"Bearer {traffic.refresh}"},
                    timeout=30,
                )
            for answer in (redeem, refresh):
                assert answer.status_code == 503, answer.text
                assert "token store is unavailable" in answer.json()["message"]
                assert "Authorization" not in answer.headers
            # A token nothing has seen yet cannot be checked against revocations once the
            # policy's mirror of them is MAX_LAG_SECONDS behind Redis: refused.
            wait_until(
                lambda: qido(fault_stack, fresh_access(traffic)) in (403, 500),
                MAX_LAG_SECONDS + 3,
                "new tokens refused while Redis is stopped",
            )
        finally:
            assert fault_stack.supervisorctl("start", "redis").returncode == 0
    finally:
        traffic.stop()
    recovered(fault_stack, traffic)
    # The auth token refused during the outage was not burnt: it works, exactly once.
    with fault_stack.http() as http:
        url = f"{fault_stack.base_url}/auth/generate-access-token"
        first = http.post(url, headers={"Authorization": f"Bearer {auth_token}"}, timeout=30)
        second = http.post(url, headers={"Authorization": f"Bearer {auth_token}"}, timeout=30)
    assert (first.status_code, second.status_code) == (200, 403)


# ------------------------------------------------------------------ policy killed


def test_policy_service_killed_fails_closed_then_recovers(fault_stack, traffic):
    traffic.start()
    try:
        time.sleep(2)
        for pid in program_pids(fault_stack, "policy"):
            os.kill(pid, signal.SIGKILL)
        # While it is gone (supervisord brings it back within seconds) nothing new is granted.
        refused = qido(fault_stack, fresh_access(traffic))
        assert refused != 200
    finally:
        traffic.stop()
    recovered(fault_stack, traffic)


# ------------------------------------------------------------------ Orthanc restarted


def test_orthanc_restarted_mid_traffic_loses_nothing_acknowledged(fault_stack, traffic):
    traffic.start()
    try:
        time.sleep(2)
        result = fault_stack.supervisorctl("restart", "orthanc")
        assert result.returncode == 0, result.stdout + result.stderr
        time.sleep(1)
    finally:
        traffic.stop()
    recovered(fault_stack, traffic)


# ------------------------------------------------------------------ new TLS certificate


def served_certificate(port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.getpeercert(binary_form=True) or b""


def test_nginx_reloads_new_certificates_without_a_restart(fault_stack):
    settings = fault_stack.settings
    port = int(fault_stack.env["HTTPS_PORT"])
    old = served_certificate(port)
    nginx_pid = int(fault_stack.supervisorctl("pid", "nginx").stdout.strip())
    # A keep-alive connection opened before the reload.
    before = fault_stack.http()
    assert before.get(f"{fault_stack.base_url}/auth/healthz/token", timeout=10).ok

    backup = fault_stack.root / "old-cert"
    backup.mkdir()
    for path in (settings.tls_certificate, settings.tls_private_key):
        shutil.move(path, backup / path.name)
    _tls_certificate(settings)  # the set-up's own code makes the new pair
    assert fault_stack.supervisorctl("signal", "HUP", "nginx").returncode == 0

    wait_until(lambda: served_certificate(port) != old, 15, "the new certificate")
    assert int(fault_stack.supervisorctl("pid", "nginx").stdout.strip()) == nginx_pid
    new_ca = fault_stack.root / "new-ca.crt"
    new_ca.write_bytes(settings.tls_certificate.read_bytes())
    with requests.Session() as fresh:
        fresh.trust_env = False
        assert fresh.get(
            f"{fault_stack.base_url}/auth/healthz/token", verify=str(new_ca), timeout=10
        ).ok
        # The old certificate is no longer what clients are shown.
        with pytest.raises(requests.exceptions.SSLError):
            fresh.get(
                f"{fault_stack.base_url}/auth/healthz/token",
                verify=str(backup / settings.tls_certificate.name),
                timeout=10,
            )
    # The trusted copy follows, as an administrator would hand out the new one.
    shutil.copy(settings.tls_certificate, settings.trusted_certificates)
    before.close()


# ------------------------------------------------------------------ read-only database


def test_database_read_only_answers_503_without_corruption(fault_stack):
    """The accounts database made immutable (root ignores modes; `chattr +i` binds root too).

    Only the database and its WAL are made immutable: making the `-shm` file
    immutable under a live mmap kills the worker with SIGBUS, which no real
    read-only disk does (a read-only remount refuses while files are open for
    writing). Orthanc's storage and Redis' AOF on a read-only disk are not
    covered here (see SECURITY.md).
    """
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    state = Path(fault_stack.env["STATE_DIR"])
    files = [state / "zhiva.db", state / "zhiva.db-wal"]
    files = [p for p in files if p.exists()]
    viewer_token = fresh_access_of(fault_stack)
    with fault_stack.database().session() as session:
        before = session.scalar(text("SELECT count(*) FROM users"))
    body = {
        "name": "Read Only",
        "username": "readonly-user",
        "password": ADMIN_PASSWORD,
        "userPassword": USER_PASSWORD,
        "createUserIfNotExists": True,
    }
    url = f"{fault_stack.base_url}/auth/generate-token"
    subprocess.run(["chattr", "+i", *map(str, files), str(state)], check=True)
    try:
        with fault_stack.http() as http:
            refused = http.post(url, json=body, timeout=60)
            assert refused.status_code == 503, refused.text
            assert "database is unavailable" in refused.json()["message"]
            assert "token" not in refused.json()
            # Reading still works: existing users keep access to the PACS.
            assert qido(fault_stack, viewer_token) == 200
    finally:
        subprocess.run(["chattr", "-i", *map(str, files), str(state)], check=True)
    with fault_stack.http() as http:
        assert http.post(url, json=body, timeout=60).status_code == 200
    with fault_stack.database().session() as session:
        assert session.scalar(text("PRAGMA integrity_check")) == "ok"
        assert session.scalar(text("SELECT count(*) FROM users")) == before + 1


def fresh_access_of(stack: Stack) -> str:
    user = stack.create_user(f"ro-viewer-{time.monotonic_ns()}", USER_PASSWORD)
    codec = TokenCodec.from_settings(stack.settings, can_sign=True)
    return codec.issue(TokenKind.ACCESS, identity(user))[0]


# ------------------------------------------------------------------ power cut (last)


def test_power_cut_keeps_users_revocations_and_acknowledged_uploads(fault_stack, traffic):
    """SIGKILL to every process of the stack during mixed traffic, then `make up`."""
    codec = traffic.codec
    revoked_refresh, revoked_claims = codec.issue(TokenKind.REFRESH, traffic.editor)
    created: list[str] = []
    redeemed: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        # Users created and auth tokens redeemed while the cut comes; only those
        # acknowledged (200) must survive.
        index = 0
        with fault_stack.http() as http:
            while not stop.is_set():
                index += 1
                username = f"cut-{index}"
                try:
                    r = http.post(
                        f"{fault_stack.base_url}/auth/generate-token",
                        json={
                            "name": "Cut",
                            "username": username,
                            "password": ADMIN_PASSWORD,
                            "userPassword": USER_PASSWORD,
                            "createUserIfNotExists": True,
                        },
                        timeout=30,
                    )
                    if r.status_code == 200:
                        created.append(username)
                        token = r.json()["token"]
                        g = http.post(
                            f"{fault_stack.base_url}/auth/generate-access-token",
                            headers={"Authorization": f"Bearer {token}"},
                            timeout=30,
                        )
                        if g.status_code == 200:
                            redeemed.append(token)
                except requests.RequestException:
                    time.sleep(0.05)

    traffic.outcome.acknowledged.clear()
    traffic.start()
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        time.sleep(1)
        store = RevocationStore(fault_stack.redis(), fault_stack.settings.redis_key_prefix)
        store.revoke(revoked_claims["jti"], revoked_claims["exp"])
        # Cut only once something of each kind was acknowledged: on a loaded machine
        # two bcrypt hashes per new user can take longer than any fixed wait.
        wait_until(
            lambda: bool(created and redeemed and traffic.outcome.acknowledged),
            60,
            "acknowledged users, redemptions and uploads before the cut",
        )
        time.sleep(1)
        supervisord = int((fault_stack.layout.run_dir / "supervisord.pid").read_text().strip())
        victims = [supervisord, *descendants(supervisord)]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        stop.set()
        traffic.stop()
        thread.join(timeout=60)
    fault_stack.close_clients()
    for pid in victims:
        wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 10, f"pid {pid} gone")
    assert created and redeemed and traffic.outcome.acknowledged

    fault_stack.up()

    with fault_stack.database().session() as session:
        assert session.scalar(text("PRAGMA integrity_check")) == "ok"
        missing = [u for u in created if find_user(session, u) is None]
    assert missing == []
    with fault_stack.http() as http:
        base = fault_stack.base_url
        refused = http.post(
            f"{base}/auth/refresh-token",
            headers={"Authorization": f"Bearer {revoked_refresh}"},
            timeout=30,
        )
        assert refused.status_code == 403
        for token in redeemed:
            again = http.post(
                f"{base}/auth/generate-access-token",
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            assert again.status_code == 403, "a redeemed auth token works again after the cut"
    assert traffic.missing(traffic.outcome.acknowledged) == []
    print(
        f"\npower cut: {len(created)} users, {len(redeemed)} redemptions, "
        f"{len(traffic.outcome.acknowledged)} uploads acknowledged; all still there"
    )
