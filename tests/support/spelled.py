"""Requests sent with their path exactly as spelled, and a token in any of its places."""

from __future__ import annotations

from typing import Any

import requests


def send_spelled(
    http: requests.Session,
    method: str,
    base_url: str,
    path: str,
    token: str | None = None,
    *,
    how: str = "header",
    timeout: float = 20,
    **kw: Any,
) -> requests.Response:
    """`method` on `base_url + path`, the path untouched (no `..` resolution, no re-quoting).

    The token travels as both doors read it: `how` is "header" (`token:`),
    "bearer" (`Authorization: Bearer`) or "query" (`?token=`).
    """
    headers = dict(kw.pop("headers", {}))
    if token and how == "header":
        headers["token"] = token
    elif token and how == "bearer":
        headers["Authorization"] = f"Bearer {token}"
    elif token and how == "query":
        path += ("&" if "?" in path else "?") + f"token={token}"
    prepared = http.prepare_request(requests.Request(method, base_url + "/", headers=headers, **kw))
    prepared.url = base_url + path
    return http.send(prepared, timeout=timeout)
