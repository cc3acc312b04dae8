"""Revoking a token in a test, and waiting until the policy service's workers know it.

Each policy worker follows the revocation stream (RevocationMirror): a new
entry arrives in milliseconds, not at once. A test that revokes and then
expects a refusal waits here for the 5 seconds a revocation may take, so it
checks the refusal, not the race.
"""

from __future__ import annotations

from typing import Any

import requests

from services.stores.revocation import RevocationStore

from .processes import wait_until

# Several answers in a row, each on a new connection: the workers all know it.
DENIED_IN_A_ROW = 6


def system_webhook_body(token: str) -> dict[str, Any]:
    """The webhook call Orthanc's plugin makes for `GET /system` with `token`."""
    return {
        "method": "get",
        "level": "system",
        "uri": "/system",
        "token-key": "token",
        "token-value": token,
    }


def revoke_and_wait(
    store: RevocationStore, policy_url: str, token: str, claims: dict[str, Any], *, once: bool
) -> None:
    if once:
        assert store.redeem_once(claims["jti"], claims["exp"])
    else:
        store.revoke(claims["jti"], claims["exp"])
    body = system_webhook_body(token)

    def denied() -> bool:
        return not any(
            requests.post(f"{policy_url}/webhook", json=body, timeout=5).json()["granted"]
            for _ in range(DENIED_IN_A_ROW)
        )

    wait_until(denied, 5, "the policy service refusing a revoked token", interval=0.02)
