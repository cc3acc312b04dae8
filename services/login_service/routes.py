"""Routes of the login service (CONTRACT section 2)."""

from __future__ import annotations

from flask import Blueprint

blueprint = Blueprint("login", __name__, template_folder="templates", static_folder="static",
                      static_url_path="/auth/static/login")


@blueprint.get("/auth/sign-in")
def sign_in_page():  # type: ignore[no-untyped-def]
    return "<!doctype html><title>zhiva sign-in</title><h1>Sign in</h1>"
