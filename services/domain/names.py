"""The one spelling of usernames and display names.

A module of its own, free of SQLAlchemy, so the policy service can normalise
a token's username without importing the ORM, whose heap every policy process
would carry.
"""

from __future__ import annotations

import re
import unicodedata

USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
MAX_NAME_LENGTH = 120


def normalise_username(raw: object) -> str | None:
    """The one spelling of a username, or None when it is not valid.

    NFKC folds compatibility forms (full-width letters) and case is folded;
    what is left must be plain ASCII, so look-alikes from other scripts
    (Cyrillic `а` in `аdmin`) are refused instead of becoming a second user.
    """
    if not isinstance(raw, str):
        return None
    username = unicodedata.normalize("NFKC", raw).strip().lower()
    return username if USERNAME_RE.fullmatch(username) else None


def normalise_name(raw: object) -> str | None:
    """A display name: printable, 1 to MAX_NAME_LENGTH characters, or None."""
    if not isinstance(raw, str):
        return None
    name = unicodedata.normalize("NFC", raw).strip()
    if not 0 < len(name) <= MAX_NAME_LENGTH or not name.isprintable():
        return None
    return name
