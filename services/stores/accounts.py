"""User accounts: the one place that creates, finds, authenticates and revokes users.

The token service's page and API and the admin CLI go through these
functions, so every rule (normalised usernames, strong passwords, disabled
users) is written once. The login service only reads: it finds accounts
through the database driver (services/stores/users.py) and checks them with
the same sign-in rule (services/domain/credentials.py), without SQLAlchemy.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.domain.credentials import (
    identity as identity,  # re-exported: part of the accounts API
)
from services.domain.names import normalise_name, normalise_username
from services.domain.passwords import hash_password, weak_password_reason
from services.stores.models import User


class AccountError(ValueError):
    """A user-facing refusal; the message is safe to show."""


def find_user(session: Session, username: str) -> User | None:
    normalised = normalise_username(username)
    if normalised is None:
        return None
    return session.scalar(select(User).where(User.username == normalised))


def save_user(
    session: Session,
    *,
    name: str,
    username: str,
    password: str,
    can_edit: bool = False,
    is_admin: bool = False,
) -> User:
    """Create the user, or overwrite an existing one's name, password and rights."""
    clean_name = normalise_name(name)
    if clean_name is None:
        raise AccountError("Name not valid")
    clean_username = normalise_username(username)
    if clean_username is None:
        raise AccountError("username not valid")
    reason = weak_password_reason(password)
    if reason:
        raise AccountError(reason)
    user = find_user(session, clean_username)
    if user is None:
        user = User(username=clean_username, token_generation=0, disabled=False)
        session.add(user)
    user.name = clean_name
    user.password_hash = hash_password(password)
    user.can_edit = can_edit
    user.is_admin = is_admin
    session.flush()
    return user


def revoke_all_tokens(session: Session, username: str) -> User:
    """Raise the user's token generation: every token issued before stops working."""
    user = find_user(session, username)
    if user is None:
        raise AccountError("User doesn't exists")
    user.token_generation += 1
    session.flush()
    return user


def set_disabled(session: Session, username: str, disabled: bool = True) -> User:
    user = find_user(session, username)
    if user is None:
        raise AccountError("User doesn't exists")
    user.disabled = disabled
    session.flush()
    return user
