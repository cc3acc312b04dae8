"""Names a test makes for what it creates on a shared stack (users, clients, patients)."""

from __future__ import annotations

import secrets


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"
