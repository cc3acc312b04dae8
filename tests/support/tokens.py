"""Spending tokens in the tests: the token service's redeem and refresh endpoints (through
its Flask test client), and the policy's decision on an access token.
"""

from __future__ import annotations

from werkzeug.test import Client

from services.policy_service import create_app as create_policy_app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def header_token(response) -> str:
    value = response.headers["Authorization"]
    assert value.startswith("Bearer ")
    return value.removeprefix("Bearer ")


def redeemed(client, auth: str) -> tuple[str, str]:
    """(access, refresh) for an auth token, through the redeem endpoint."""
    response = client.post("/auth/generate-access-token", headers=bearer(auth))
    assert response.status_code == 200, response.get_json()
    return header_token(response), response.get_data(as_text=True)


def refreshes(client, refresh: str) -> bool:
    response = client.post("/auth/refresh-token", headers=bearer(refresh))
    assert (response.status_code, response.get_json(silent=True)) in (
        (200, None),
        (403, {"message": "Invalid Token"}),
    )
    return response.status_code == 200


def policy_grants(app_config, token: str) -> bool:
    """The policy's decision on a read with `token`, asked through its Orthanc webhook.

    A policy app made for the question has no cached user state, so it judges the
    database as it is now (a running worker sees a change within USER_CACHE_SECONDS).
    """
    policy = create_policy_app(app_config)
    try:
        body = {
            "method": "get",
            "level": "system",
            "uri": "/system",
            "token-key": "token",
            "token-value": token,
        }
        response = Client(policy).post("/webhook", json=body)
        assert response.status_code == 200
        return response.get_json()["granted"]
    finally:
        policy.close()
