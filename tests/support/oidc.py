"""Drives the OpenID Connect provider as a client and a browser do, through Flask test clients."""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from flask import Flask
from flask.testing import FlaskClient

from services.domain.origins import OriginPolicy
from services.domain.passwords import hash_password
from services.stores.accounts import find_user
from services.stores.db import Database
from services.stores.models import User
from services.stores.oauth_clients import add_client

BASE_URL = "https://localhost"
CLIENT_ORIGIN = "https://localhost:3000"
REDIRECT_URI = CLIENT_ORIGIN + "/callback"
POST_LOGOUT_URI = CLIENT_ORIGIN + "/"
PASSWORD = "Provider-Passw0rd!"
SCOPE = "openid profile offline_access"
CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


@functools.cache
def password_hash() -> str:
    # bcrypt costs most of a second here; every test's fresh database gets the same hash.
    return hash_password(PASSWORD)


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def query_of(location: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(location).query).items()}


@dataclass
class Provider:
    """The login app (browser pages) and the token app (client endpoints) of one database."""

    login: Flask
    token: Flask
    browser: FlaskClient = field(init=False)
    machine: FlaskClient = field(init=False)

    def __post_init__(self) -> None:
        self.browser = self.login.test_client()
        self.machine = self.token.test_client()

    def database(self) -> Database:
        return Database(self.token.extensions["zhiva"].settings.database_url)

    def user(
        self, username: str = "ann", *, can_edit: bool = False, disabled: bool = False
    ) -> None:
        """Create (or overwrite) a user with PASSWORD; the bcrypt hash is made once per run."""
        database = self.database()
        try:
            with database.session() as session:
                user = find_user(session, username)
                if user is None:
                    user = User(username=username, token_generation=0)
                    session.add(user)
                user.name = "Ann Smith"
                user.password_hash = password_hash()
                user.can_edit = can_edit
                user.is_admin = False
                user.disabled = disabled
        finally:
            database.engine.dispose()

    def client(
        self,
        client_id: str = "app",
        redirect_uris: tuple[str, ...] = (REDIRECT_URI,),
        *,
        confidential: bool = False,
    ) -> str | None:
        database = self.database()
        policy = OriginPolicy(self.token.extensions["zhiva"].settings.origin_patterns)
        try:
            with database.session() as session:
                return add_client(
                    session, client_id, redirect_uris, (POST_LOGOUT_URI,), confidential, policy
                )
        finally:
            database.engine.dispose()

    def authorize_query(self, **changes: Any) -> dict[str, Any]:
        verifier, challenge = pkce_pair()
        query = {
            "response_type": "code",
            "client_id": "app",
            "redirect_uri": REDIRECT_URI,
            "scope": SCOPE,
            "state": "st1",
            "nonce": secrets.token_urlsafe(8),  # a nonce is refused the second time
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        query.update(changes)
        query["_verifier"] = verifier
        return query

    def authorize(self, query: dict[str, Any], **kwargs: Any) -> Any:
        params = {k: v for k, v in query.items() if not k.startswith("_") and v is not None}
        return self.browser.get(
            "/auth/oauth/authorize?" + urlencode(params), base_url=BASE_URL, **kwargs
        )

    def sign_in(
        self,
        query: dict[str, Any],
        username: str = "ann",
        password: str = PASSWORD,
        *,
        csrf: bool = True,
        address: str = "10.0.0.1",
    ) -> Any:
        params = {k: v for k, v in query.items() if not k.startswith("_") and v is not None}
        url = "/auth/oauth/authorize?" + urlencode(params)
        data = {"username": username, "password": password}
        if csrf:
            # prompt=login: the form, even where a session would answer with a code.
            page = self.browser.get(url + "&prompt=login", base_url=BASE_URL)
            found = CSRF.search(page.text)
            assert found, page.text
            data["csrf_token"] = found.group(1)
        return self.browser.post(
            url,
            data=data,
            base_url=BASE_URL,
            headers={"Referer": BASE_URL + url, "X-Forwarded-For": address},
        )

    def code(
        self, query: dict[str, Any] | None = None, **kwargs: Any
    ) -> tuple[str, dict[str, Any]]:
        query = query or self.authorize_query()
        response = self.sign_in(query, **kwargs)
        assert response.status_code == 302, response.text
        return query_of(response.headers["Location"])["code"], query

    def exchange(self, code: str, verifier: str | None, **changes: Any) -> Any:
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "client_id": "app",
            "code_verifier": verifier,
        }
        data.update(changes)
        headers = data.pop("_headers", None) or {}
        return self.machine.post(
            "/auth/oauth/token",
            data={k: v for k, v in data.items() if v is not None},
            base_url=BASE_URL,
            headers=headers,
        )

    def tokens(self, **kwargs: Any) -> dict[str, Any]:
        code, query = self.code(**kwargs)
        response = self.exchange(code, query["_verifier"])
        assert response.status_code == 200, response.text
        return response.get_json()

    def refresh(self, refresh_token: str, client_id: str = "app", **headers: str) -> Any:
        return self.machine.post(
            "/auth/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": client_id,
            },
            base_url=BASE_URL,
            headers=headers,
        )
