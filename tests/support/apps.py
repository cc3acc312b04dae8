"""Service apps made by tests, closed when the test is done with them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask


@contextmanager
def closing(app: Flask) -> Iterator[Flask]:
    """Yield `app`, then close its Redis connections.

    A worker keeps its clients for life. A test's app left to the collector dies in a
    cycle, where a socket may be finalized before the connection that would close it:
    a ResourceWarning (an error here) in whichever test happens to collect it.
    """
    try:
        yield app
    finally:
        app.extensions["zhiva"].close()
