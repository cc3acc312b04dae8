"""The policy service as gunicorn runs it: uvicorn workers, decisions right in the event loop.

A threaded worker spends much of a decision's CPU serving, not deciding: the
hand-off of each request to a thread pool, selectors and futures, HTTP parsing
in Python (docs/BENCHMARKS.md). A decision waits on no network (revocations
come from the worker's RevocationMirror, users from a 2 s cache), so an event
loop can run it inline. `PolicyWorker` is uvicorn's gunicorn worker on uvloop
with httptools' C parser (cheaper per decision than gunicorn's own asgi
worker, docs/BENCHMARKS.md); `serve` turns each
ASGI request into the few WSGI environ keys the policy's endpoints read,
calls the same WSGI application the tests drive, synchronously, and sends
its answer.

It is not a general WSGI server: only PolicyApp's keys are built, bodies are
read whole up to MAX_DRAINED_BODY, and what blocks in the application blocks
the loop. That is the database read on a user-cache miss (one indexed SELECT,
per user and worker at most every USER_CACHE_SECONDS) and the audit line's
`write` to a local file.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from .routes import MAX_BODY, MAX_DRAINED_BODY, WSGIApp

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _CoalescedWrites:
    """A connection's transport whose writes wait for the end of the loop's turn, then go as one.

    uvicorn writes a response's status line and headers with one `write` and its
    body with another, and uvloop sends each at once: two system calls and two
    TCP segments per webhook answer, a sizeable part of a policy worker's CPU
    (docs/BENCHMARKS.md), besides what the peer (nginx, Orthanc's plugin) pays
    to read two segments. Here the writes of
    one turn are joined and sent together when the response is complete
    (`CoalescingProtocol`) or, for anything else, when the loop gets to the
    scheduled flush. What is pending when the connection is already going
    (the peer left) is dropped, as the transport would drop it.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending = []
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()  # a response written just before `Connection: close` still goes out
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, each response sent with one system call (above)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_CoalescedWrites(transport, self.loop))  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()


class PolicyWorker(UvicornWorker):
    """infra/gunicorn.conf.py's worker class for the policy service."""

    CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012 - uvicorn_worker's own interface
        # Named, not "auto": a missing C extension fails the start instead of slowing it.
        "loop": "uvloop",
        "http": CoalescingProtocol,
        "lifespan": "on",
        # Decisions are logged in audit.log; an access line each would double the logging.
        "access_log": False,
        "server_header": False,
        # No X-Forwarded-For rewriting of the client address by a middleware on every
        # request: the endpoints read nginx's X-Real-IP (or the webhook body's `ip`).
        "proxy_headers": False,
        # How often uvicorn calls callback_notify (below): the heartbeat gunicorn's master
        # watches, and here also the check that the master is still there.
        "timeout_notify": 1,
    }

    async def callback_notify(self) -> None:
        # A master killed with SIGKILL leaves its workers serving the port it shared with
        # them (SO_REUSEPORT) next to the new master's; gthread workers notice and leave,
        # uvicorn's do not by themselves. uvicorn's SIGTERM handler ends the worker cleanly.
        if os.getppid() != self.ppid:
            self.log.info("gunicorn master gone; policy worker %s leaving", os.getpid())
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.notify()


def _environ(scope: Scope, body: bytes, length: int) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "PATH_INFO": scope["path"],
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "CONTENT_LENGTH": str(length),
        "wsgi.input": io.BytesIO(body),
        "REMOTE_ADDR": (scope.get("client") or ("", 0))[0],
    }
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        if name in ("CONTENT_LENGTH", "CONTENT_TYPE"):
            continue  # the length is what was read; the type is not used
        key, value = "HTTP_" + name, raw_value.decode("latin-1")
        # WSGI's rule for a repeated header: one value, joined with commas.
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


async def _read_body(receive: Receive) -> tuple[bytes, int]:
    """The body when it is at most MAX_BODY, else b"" with its length (the app refuses it)."""
    chunks: list[bytes] = []
    length = 0
    while length <= MAX_DRAINED_BODY:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        length += len(chunk)
        if length <= MAX_BODY:
            chunks.append(chunk)
        if not message.get("more_body"):
            break
    return (b"".join(chunks) if length <= MAX_BODY else b""), length


def serve(app: WSGIApp, on_startup: Callable[[], None], on_shutdown: Callable[[], None]) -> ASGIApp:
    """The ASGI application that answers every request with `app`'s WSGI answer."""

    async def lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                on_startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                on_shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets here; the worker closes the connection
        body, length = await _read_body(receive)
        answer: dict[str, Any] = {}

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> None:
            answer["status"] = int(status.split(" ", 1)[0])
            answer["headers"] = [(k.lower().encode(), v.encode("latin-1")) for k, v in headers]

        chunks = app(_environ(scope, body, length), start_response)
        await send(
            {
                "type": "http.response.start",
                "status": answer["status"],
                "headers": answer["headers"],
            }
        )
        await send({"type": "http.response.body", "body": b"".join(chunks)})

    return asgi
