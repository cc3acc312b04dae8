"""A WSGI app for tests/test_gunicorn_sharing.py: a large heap made at import, and a request
that runs a full collection in the worker that serves it.

With several workers, gunicorn loads it in the master (infra/render.py), as it does a
service, so the heap is shared with the forked workers until one of them writes to its pages.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from typing import Any

# About 20 MB of small lists: objects the collector tracks, as a service's modules,
# classes and functions are.
HEAP = [[number] for number in range(300_000)]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/collect":
        gc.collect()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
