"""The sign-in rule, free of SQLAlchemy: which user a username and password stand for.

The login service reads accounts through the database driver
(services/shared/users.py; loading SQLAlchemy would cost every login process
about 19 MB, issue 6), the accounts code and the admin CLI through the ORM.
Both check a password here, so the rule is written once: every failure costs
one bcrypt check, disabled users are refused, input that is not text fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from .passwords import check_password
from .tokens import Identity

if TYPE_CHECKING:  # named for the reader only: importing models would load SQLAlchemy
    from .models import User
    from .users import Account

# The ORM's User or the driver's Account: the rule reads the same attributes of either.
U = TypeVar("U", bound="User | Account")


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


def identity(user: User | Account) -> Identity:
    return Identity(
        name=user.name,
        username=user.username,
        can_edit=user.can_edit,
        is_admin=user.is_admin,
        generation=user.token_generation,
    )
