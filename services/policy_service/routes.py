"""Routes of the policy service: the Orthanc webhook and nginx's auth_request check."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

blueprint = Blueprint("policy", __name__)


@blueprint.post("/webhook")
def orthanc_webhook():  # type: ignore[no-untyped-def]
    # Fail closed until the decision function exists (issue 5).
    return jsonify(granted=False, validity=0)


@blueprint.get("/authorize")
def nginx_check():  # type: ignore[no-untyped-def]
    has_token = bool(request.headers.get("Authorization") or request.headers.get("token")
                     or request.args.get("token"))
    return ("", 403) if has_token else ("", 401)
