"""Password rules and bcrypt hashing, shared by the set-up, the token and the login service."""

from __future__ import annotations

import re

import bcrypt

# bcrypt's cost is deliberate: about a quarter of a second per check on a
# 2-core machine makes guessing slow. Old hashes ($2b$10$...) still verify.
BCRYPT_ROUNDS = 12
# bcrypt only reads the first 72 bytes; longer passwords are refused, not cut.
MAX_PASSWORD_BYTES = 72

# The rule as shown to users (not a password, whatever a linter guesses from the name).
STRONG_PASSWORD_RULE = (
    "The password needs at least 8 characters with an upper-case letter, "  # noqa: S105
    "a lower-case letter, a digit and a special character"
)

_RULES = (r"[A-Z]", r"[a-z]", r"[0-9]", r"[^A-Za-z0-9]")


def weak_password_reason(password: str) -> str | None:
    """Why `password` is not strong enough, or None when it is."""
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        return f"The password is longer than {MAX_PASSWORD_BYTES} bytes"
    if len(password) < 8 or not all(re.search(rule, password) for rule in _RULES):
        return STRONG_PASSWORD_RULE
    return None


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()


# A real hash of a random password: checking against it costs the same time as a
# real check, so an unknown user name cannot be told apart by timing.
_DUMMY_HASH = hash_password("dummy-Password-1!")


def check_password(password: str, password_hash: str | None) -> bool:
    """bcrypt check; a missing, malformed or over-long input is a failed check of equal cost."""
    candidate = password.encode()
    if len(candidate) > MAX_PASSWORD_BYTES:
        candidate, password_hash = candidate[:MAX_PASSWORD_BYTES], None
    try:
        if password_hash:
            return bcrypt.checkpw(candidate, password_hash.encode())
    except ValueError:
        pass  # malformed hash: spend the time of a real check below
    bcrypt.checkpw(candidate, _DUMMY_HASH.encode())
    return False
