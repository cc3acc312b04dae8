"""The sign-in decisions, free of Flask: where the browser may go back to, and who signed in.

Routes parse the request and shape the answer; everything that decides
(return address, throttling, credentials, the redirect URL) lives here and
raises the domain errors below, which the routes turn into HTTP.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from services.domain.credentials import authenticate
from services.domain.names import normalise_username
from services.domain.origins import Origin, OriginPolicy, parse_origin
from services.domain.user import UserRecord
from services.stores.throttle import (
    MAX_SLOWDOWN_SECONDS,
    SLOWDOWN_STEP_SECONDS,
    Throttle,
    address_key,
    slowdown_seconds,
)
from services.stores.users import UserTable

MAX_RETURN_URI_LENGTH = 2048
MAX_RESPONSE_TYPE_LENGTH = 4096
RESPONSE_TYPE = "authToken"
STATE_CONTEXT = "zhiva_auth"
# Query parameters we write into the return address; any the caller brought along
# are dropped, so a crafted link cannot plant its own token before ours.
OWN_PARAMETERS = ("token", "state")


class SignInError(Exception):
    """Base of the sign-in domain errors; the message is safe to show."""


class BadReturnUri(SignInError):
    """The return address is missing, malformed or not on an allowed origin."""

    def __init__(self, origin: Origin | None = None) -> None:
        super().__init__("The return address of this sign-in link is missing or not allowed")
        # An admin configuring a new viewer domain needs to know which origin to allow.
        self.origin = origin


class BadResponseType(SignInError):
    def __init__(self) -> None:
        super().__init__("The response_type of this sign-in link is not valid")


class SignInFailed(SignInError):
    """Unknown user, wrong password, disabled user: one message for all of them."""

    def __init__(self) -> None:
        super().__init__("Invalid username or password")


class TooManyAttempts(SignInError):
    """The client address failed too often; it is refused until its window ends."""

    def __init__(self, retry_after: int) -> None:
        minutes = max(1, -(-retry_after // 60))
        super().__init__(
            "Too many failed sign-ins from this network address. "
            f"Try again in {minutes} minute{'s' if minutes > 1 else ''}."
        )
        self.retry_after = retry_after


@dataclass(frozen=True)
class ReturnUri:
    """A checked return address: an absolute https URL on an allowed origin."""

    url: str
    origin: Origin

    @property
    def audience(self) -> str:
        return str(self.origin)


def check_return_uri(raw: object, policy: OriginPolicy) -> ReturnUri:
    """The return address when it is safe to redirect to, else BadReturnUri.

    parse_origin already refuses user-info, backslashes, whitespace and control
    characters (browsers strip or reinterpret those, so the origin we check and
    the one the browser goes to could differ); here https and the policy are required.
    """
    if not isinstance(raw, str) or len(raw) > MAX_RETURN_URI_LENGTH:
        raise BadReturnUri()
    origin = parse_origin(raw)
    if origin is None or origin.scheme != "https" or not raw[:8].lower() == "https://":
        raise BadReturnUri()
    if not policy.allows(origin):
        raise BadReturnUri(origin)
    return ReturnUri(raw, origin)


def parse_response_type(raw: object) -> dict[str, Any]:
    """The viewer's `returnParams` from `response_type` (absent: none), else BadResponseType."""
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, str) or len(raw) > MAX_RESPONSE_TYPE_LENGTH:
        raise BadResponseType()
    try:
        value = json.loads(raw)
    except ValueError:
        raise BadResponseType() from None
    if not isinstance(value, dict) or value.get("type") != RESPONSE_TYPE:
        raise BadResponseType()
    params = value.get("returnParams", {})
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadResponseType()
    return params


def redirect_location(return_uri: ReturnUri, token: str, return_params: dict[str, Any]) -> str:
    """`return_uri?token=…&state=…`, keeping the address's own query.

    The state is JSON `{"context":"zhiva_auth","state":"","params":returnParams}`;
    every parameter is percent-encoded (spaces as %20), the fragment stays last.
    """
    parts = urlsplit(return_uri.url)
    kept = [
        (name, value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
        if name not in OWN_PARAMETERS
    ]
    state = json.dumps(
        {"context": STATE_CONTEXT, "state": "", "params": return_params}, separators=(",", ":")
    )
    query = urlencode([*kept, ("token", token), ("state", state)], quote_via=quote)
    return urlunsplit((parts.scheme.lower(), parts.netloc, parts.path, query, parts.fragment))


def throttle_keys(username: object, client_address: str | None) -> tuple[str, str]:
    """The counter keys of one attempt: its (username, client address) pair, and its address.

    Both are short whatever the input: a string that is not a username is hashed.
    """
    address = address_key(client_address)
    raw = username if isinstance(username, str) else ""
    name = (
        normalise_username(raw)
        or "x-" + hashlib.sha256(raw.encode(errors="replace")).hexdigest()[:32]
    )
    return f"{address}|{name}", address


@dataclass
class SignIn:
    """Checks credentials, throttled per (username, client address) and per client address.

    Nothing here counts failures per username alone: whoever can reach the page
    could then lock any user out. Failures of one username from one address slow
    that pair's next answers down (bounded by `slowdown_max`); an address that
    fails `address_throttle.limit` times within its window, across any usernames,
    is refused (429) until the window ends. Another address is never held back
    by them. A database error passes through (the app answers 503) and counts
    as no attempt.
    """

    users: UserTable
    pair_throttle: Throttle
    address_throttle: Throttle
    slowdown_step: float = SLOWDOWN_STEP_SECONDS
    slowdown_max: float = MAX_SLOWDOWN_SECONDS

    def delay(self, failures: int) -> float:
        """Seconds the next answer to a pair with `failures` failures waits."""
        return slowdown_seconds(failures, self.slowdown_step, self.slowdown_max)

    def authenticate(
        self, username: object, password: object, client_address: str | None
    ) -> UserRecord:
        pair, address = throttle_keys(username, client_address)
        # An address over its limit is refused even the right password: else guessing goes on.
        wait = self.address_throttle.retry_after(address)
        if wait:
            raise TooManyAttempts(wait)
        # Before the check, whatever the password: were only wrong guesses delayed, a
        # guesser could give up on every answer that does not come at once.
        delay = self.delay(self.pair_throttle.count(pair))
        if delay:
            time.sleep(delay)
        user = authenticate(self.users.find, username, password)
        if user is None:
            self.pair_throttle.failed(pair)
            self.address_throttle.failed(address)
            raise SignInFailed()
        # Only the pair's counter is cleared: clearing the address's would let one valid
        # account reset the counter of a client guessing at other accounts.
        self.pair_throttle.clear(pair)
        return user
