"""A request nginx sends on a kept-alive connection Orthanc has just closed is not lost.

nginx keeps idle connections to Orthanc open for 500 ms (nginx.conf.j2); Orthanc 1.10
closes its side after about a second. While nginx reads a large upload into its
buffer it does not return to its event loop, so neither its timer nor Orthanc's close
is seen, and the upload goes out on the dead connection. nginx sends a request again on
a new connection when a kept-alive one fails, but not a POST unless told to
(`non_idempotent`): a 512 MB STOW-RS answered 502 this way (`sendfile() failed (32:
Broken pipe) while sending request to upstream`, tests/test_dicom_clients.py).

When it happens cannot be timed against a real Orthanc, so the Orthanc upstream of a
copy of the stack's own nginx.conf is, here, a server that behaves as Orthanc does at
that moment: it answers the first request of a connection and, when the next one
arrives, closes the connection without reading its body. Everything else is the
stack's: TLS, the policy service's `auth_request`, the `/zhiva/` location.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from tests.support.dicomweb import access_token, bearer_session
from tests.support.nginx import NginxCopy, listen_on, upstream_to
from tests.support.processes import free_port
from tests.support.stack import Stack

pytestmark = pytest.mark.stack

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
# More than /zhiva/'s client_body_buffer_size (1m): nginx keeps the body in a temporary
# file and sends it from there, as it did the upload that failed.
UPLOAD = b"x" * (2 * 1024 * 1024)


class ClosingUpstream:
    """An HTTP/1.1 server that answers `answered` requests per connection, then closes the
    connection on the next request, its body unread and unanswered. It records each
    request as (connection, method, path, length of the body read, None if dropped)."""

    def __init__(self, answered: int) -> None:
        self.answered = answered
        self.requests: list[tuple[int, str, str, int | None]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.connections += 1
            threading.Thread(
                target=self._serve, args=(connection, self.connections), daemon=True
            ).start()

    def _serve(self, connection: socket.socket, number: int) -> None:
        with connection, connection.makefile("rb") as incoming:
            for served in range(self.answered + 1):
                head = []
                while (line := incoming.readline()) not in (b"\r\n", b""):
                    head.append(line.decode("latin-1"))
                if not head:
                    return  # nginx closed it
                method, path, _ = head[0].split(" ", 2)
                length = next(
                    (
                        int(h.split(":", 1)[1])
                        for h in head
                        if h.lower().startswith("content-length:")
                    ),
                    0,
                )
                if served == self.answered:
                    self.requests.append((number, method, path, None))
                    return  # closed, the body unread, the request unanswered
                self.requests.append((number, method, path, len(incoming.read(length))))
                connection.sendall(ANSWER)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self.listener.close()


@pytest.fixture(scope="module")
def editor(stack: Stack) -> str:
    return access_token(stack, can_edit=True)


@pytest.fixture
def nginx_to(stack: Stack, tmp_path) -> Iterator:
    """Start a copy of the stack's nginx whose Orthanc is `upstream`; its base URL."""
    started: list[NginxCopy] = []

    def start(upstream: ClosingUpstream) -> str:
        port = free_port()
        copy = NginxCopy(
            stack,
            tmp_path / f"nginx-{len(started)}",
            lambda conf: listen_on(upstream_to(conf, "orthanc", upstream.port), port),
        )
        started.append(copy)
        base = f"https://localhost:{port}"
        copy.start(f"{base}/auth/healthz/policy")
        return base

    yield start
    for copy in started:
        copy.stop()


@pytest.mark.parametrize(
    ("method", "body"), [("GET", b""), ("POST", UPLOAD)], ids=["GET", "POST-2MB"]
)
def test_a_request_on_a_connection_orthanc_closed_goes_again_on_a_new_one(
    stack, editor, nginx_to, method, body
):
    upstream = ClosingUpstream(answered=1)
    base = nginx_to(upstream)
    try:
        with bearer_session(stack, editor) as http:
            # Leaves nginx's worker holding the connection, kept alive.
            assert http.get(f"{base}/zhiva/system", timeout=10).status_code == 200
            response = http.request(method, f"{base}/zhiva/instances", data=body, timeout=10)
        assert response.status_code == 200, response.text
        # Once on the connection kept alive (dropped), then whole on a new one.
        assert upstream.requests[1:] == [
            (1, method, "/instances", None),
            (2, method, "/instances", len(body)),
        ]
    finally:
        upstream.close()


def test_a_post_orthanc_drops_on_a_new_connection_is_not_sent_twice(stack, editor, nginx_to):
    # Only a kept-alive connection's failure is retried: Orthanc may have read and acted on
    # a request a new connection carried before it failed.
    upstream = ClosingUpstream(answered=0)
    base = nginx_to(upstream)
    try:
        with bearer_session(stack, editor) as http:
            response = http.post(f"{base}/zhiva/instances", data=UPLOAD, timeout=10)
        assert response.status_code == 502
        assert upstream.requests == [(1, "POST", "/instances", None)]
    finally:
        upstream.close()
