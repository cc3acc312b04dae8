"""The OpenID Connect provider's pages in Chromium, as a person fills them in."""

from __future__ import annotations

from typing import Any


def provider_sign_in(page: Any, username: str, password: str) -> None:
    """Fill the provider's sign-in form and submit it (the page is on it)."""
    assert page.locator("h1").inner_text() == "Sign in"
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("button[type=submit]")
