"""The sign-in rule, free of SQLAlchemy: which user a username and password stand for.

The login service reads users through the database driver
(services/stores/users.py: SQLAlchemy's heap would sit in every login process),
the accounts code and the admin CLI through the ORM.
Both check a password here, so the rule is written once: every failure costs
one bcrypt check, disabled users are refused, input that is not text fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from services.domain.passwords import check_password
from services.domain.user import UserRecord

if TYPE_CHECKING:  # named for the reader only: importing models would load SQLAlchemy
    from services.stores.models import User

# The ORM's User or the driver's record: the rule reads the same attributes of either.
U = TypeVar("U", bound="User | UserRecord")


def authenticate(find: Callable[[str], U | None], username: object, password: object) -> U | None:
    """The enabled user with this password, or None; the same cost for every failure.

    `find` looks the username up (None: no such user); a database error passes through.
    """
    user = find(username) if isinstance(username, str) else None
    valid = check_password(
        password if isinstance(password, str) else "", user.password_hash if user else None
    )
    if not valid or user is None or user.disabled:
        return None
    return user


def identity(user: User | UserRecord) -> UserRecord:
    """The user's record as it is now: what a token is issued for, safe to keep once the
    ORM session that loaded `user` is gone."""
    if isinstance(user, UserRecord):
        return user
    return UserRecord(
        name=user.name,
        username=user.username,
        password_hash=user.password_hash,
        can_edit=user.can_edit,
        is_admin=user.is_admin,
        disabled=user.disabled,
        token_generation=user.token_generation,
        subject=user.subject,
    )
