"""The OpenID Connect provider's machine endpoints: token, revoke, userinfo, device, discovery.

They sit with token minting; the protocol is services/web/oidc.py's. Errors keep
RFC 6749's `{"error": …}` shape, which every OAuth client reads, rather than the
`{"message": …}` of the zhiva endpoints.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from werkzeug.wrappers import Response as BaseResponse

from services.web.app import resources
from services.web.oidc import ZhivaAuthorizationServer, discovery_document

blueprint = Blueprint("provider", __name__)

# Answered with CORS for the allowed origins (a client's redirect URIs must be on one; the
# server then refuses any origin that is not the client's own).
CORS_PATHS = (
    "/auth/oauth/token",
    "/auth/oauth/revoke",
    "/auth/oauth/userinfo",
    "/auth/oauth/device",
)


def _server() -> ZhivaAuthorizationServer:
    return current_app.extensions["zhiva_oidc"]


def _no_store(response: BaseResponse) -> BaseResponse:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@blueprint.post("/auth/oauth/token")
def token() -> BaseResponse:
    return _no_store(_server().create_token_response())


@blueprint.post("/auth/oauth/revoke")
def revoke() -> BaseResponse:
    return _no_store(_server().create_endpoint_response("revocation"))


@blueprint.route("/auth/oauth/userinfo", methods=["GET", "POST"])
def userinfo() -> BaseResponse:
    return _no_store(_server().create_endpoint_response("userinfo"))


@blueprint.post("/auth/oauth/device")
def device() -> BaseResponse:
    return _no_store(_server().create_endpoint_response("device_authorization"))


@blueprint.get("/auth/.well-known/openid-configuration")
def discovery() -> Response:
    response = jsonify(discovery_document(resources().settings))
    response.headers["Cache-Control"] = "public, max-age=300"
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


VIEWS = (token, revoke, userinfo, device)
