"""Service apps made by tests, closed when the test is done with them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from flask import Flask
from sqlalchemy.orm import Session

from services.domain.credentials import authenticate
from services.stores.accounts import find_user
from services.stores.models import User


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


def signs_in(session: Session, username: str, password: str) -> User | None:
    """The enabled user with this password, by the services' one sign-in rule."""
    return authenticate(partial(find_user, session), username, password)
