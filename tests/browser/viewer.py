"""A stand-in for the zhiva viewer: a tiny HTTPS page on its own origin (`https://localhost:PORT`).

Its start page links to our sign-in page the way the viewer's "Login with
zhiva" button does; `/callback` is where the browser comes back with
`token` and `state`. It serves fixed HTML only and never reads the token.
"""

from __future__ import annotations

import html
import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlencode

RETURN_PARAMS = {"serverName": "local PACS", "step": 2}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ViewerPage:
    def __init__(self, sign_in_base: str, certificate: Path, private_key: Path) -> None:
        self.port = free_port()
        self.origin = f"https://localhost:{self.port}"
        self.callback = f"{self.origin}/callback?tab=servers"
        query = urlencode(
            {
                "return_uri": self.callback,
                "response_type": json.dumps({"type": "authToken", "returnParams": RETURN_PARAMS}),
            }
        )
        self.sign_in_link = f"{sign_in_base}/auth/sign-in?{query}"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, private_key)
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        link = html.escape(self.sign_in_link, quote=True)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path == "/":
                    body = (
                        "<!doctype html><title>viewer</title><h1>Stand-in viewer</h1>"
                        f'<a id="login" href="{link}">Login with zhiva</a>'
                    )
                elif self.path.startswith("/callback"):
                    body = (
                        "<!doctype html><title>viewer callback</title><h1>Back in the viewer</h1>"
                    )
                else:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # the URLs carry tokens: keep them out of the test output

        return Handler

    def __enter__(self) -> ViewerPage:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
