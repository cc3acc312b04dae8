"""Share links: a token that reads one study, for a while, and the rules of making one.

A share is a row in the `shares` table (services/stores/shares.py) and a JWT
of kind `share` whose `jti` is the share's id: revoking the share revokes that
jti through the revocation path every door follows (within 5 s). The token
names the study twice, by StudyInstanceUID (`study`, what DICOMweb paths
carry) and by Orthanc's ID (`studyId`, what Orthanc's REST paths carry);
services/access/shares.py decides what it may read.

A share does not act as its creator: it reads its study whatever the
creator's rights become, until it expires or is revoked (an administrator
lists and revokes every share).
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from services.access.permissions import UID
from services.domain.tokens import TokenCodec, TokenKind
from services.domain.user import UserRecord

DEFAULT_LIFETIME = 7 * 24 * 3600
MAX_LIFETIME = 365 * 24 * 3600
# A PIN is what a person types from a message: 4 to 12 digits.
PIN = re.compile(r"[0-9]{4,12}")
_DURATION = re.compile(r"([1-9][0-9]*)([smhdw]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class ShareError(ValueError):
    """A refused share request; the message is safe to show."""


@dataclass(frozen=True, slots=True)
class ShareRecord:
    id: str  # 32 hex digits; the token's jti
    study_uid: str
    study_id: str  # Orthanc's ID of the study
    created_by: str  # a username, or `zhiva-admin` for the CLI
    created_at: int  # epoch seconds
    expires_at: int
    pin_hash: str | None  # bcrypt of the PIN; None: the link opens at once
    revoked: bool = False

    def usable(self, now: float | None = None) -> bool:
        return not self.revoked and (time.time() if now is None else now) < self.expires_at


def new_share_id() -> str:
    return uuid.uuid4().hex


def check_study_uid(value: object) -> str:
    if not isinstance(value, str) or not UID.fullmatch(value) or value.endswith("."):
        raise ShareError("study must be a StudyInstanceUID (digits and dots)")
    return value


def check_lifetime(value: object) -> int:
    """Seconds from the API's `expiresIn` (default 7 days, at most a year)."""
    if value is None:
        return DEFAULT_LIFETIME
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_LIFETIME:
        raise ShareError(f"expiresIn must be a whole number of seconds from 1 to {MAX_LIFETIME}")
    return value


def parse_duration(text: str) -> int:
    """Seconds from the CLI's `--expires` (`3600`, `90m`, `12h`, `7d`, `2w`)."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ShareError(f"{text!r} is not a duration such as 3600, 90m, 12h, 7d or 2w")
    return check_lifetime(int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def check_pin(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not PIN.fullmatch(value):
        raise ShareError("pin must be 4 to 12 digits")
    return value


def issue_share_token(codec: TokenCodec, share: ShareRecord) -> tuple[str, dict[str, Any]]:
    """The share's token: kind `share`, its id as `jti`, its study, its expiry."""
    holder = UserRecord(
        name=f"share {share.id[:8]}",
        username=share.created_by,
        password_hash="",
        can_edit=False,
        is_admin=False,
        disabled=False,
        token_generation=0,
        subject="",
    )
    extra = {
        "jti": share.id,
        "exp": share.expires_at,
        "study": share.study_uid,
        "studyId": share.study_id,
    }
    return codec.issue(TokenKind.SHARE, holder, extra=extra)
