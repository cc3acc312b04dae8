"""Routes of the token service (CONTRACT section 2)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from services.shared.web import resources

blueprint = Blueprint("token", __name__, template_folder="templates", static_folder="static",
                      static_url_path="/auth/static/token")


@blueprint.get("/auth/.well-known/jwks.json")
def jwks():  # type: ignore[no-untyped-def]
    response = jsonify(resources().codec.jwks())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@blueprint.get("/auth/token")
def token_page():  # type: ignore[no-untyped-def]
    return "<!doctype html><title>zhiva tokens</title><h1>Generate a token</h1>"
