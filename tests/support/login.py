"""The login service's sign-in page and JSON path, driven through Flask's test client."""

from __future__ import annotations

import re

from services.stores.accounts import save_user, set_disabled
from services.stores.db import Database
from services.web.app import resources

BASE_URL = "https://localhost"
VIEWER = "https://localhost:3000"
PASSWORD = "Sign-in-Passw0rd!"


class SignInActions:
    """Drives the sign-in page like a browser: GET the form, POST it back with its CSRF token."""

    def __init__(self, app, client):
        self.app = app
        self.client = client

    def user(
        self, username="ann", password=PASSWORD, *, name="Ann Smith", can_edit=False, disabled=False
    ):
        # Written as the token service and zhiva-admin write users; the login only reads.
        database = Database(resources_of(self.app).settings.database_url)
        try:
            with database.session() as session:
                save_user(
                    session, name=name, username=username, password=password, can_edit=can_edit
                )
                if disabled:
                    set_disabled(session, username)
        finally:
            database.engine.dispose()

    def page(self, return_uri=VIEWER + "/", response_type=None, **kwargs):
        query = {"return_uri": return_uri}
        if response_type is not None:
            query["response_type"] = response_type
        return self.client.get("/auth/sign-in", query_string=query, base_url=BASE_URL, **kwargs)

    def csrf_token(self, return_uri=VIEWER + "/"):
        response = self.page(return_uri)
        assert response.status_code == 200
        return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', response.text).group(1)

    def submit(
        self,
        username="ann",
        password=PASSWORD,
        *,
        return_uri=VIEWER + "/",
        response_type="",
        csrf=True,
        address="10.0.0.1",
        forwarded_for=None,
    ):
        data = {
            "username": username,
            "password": password,
            "return_uri": return_uri,
            "response_type": response_type,
        }
        if csrf:
            data["csrf_token"] = self.csrf_token()
        return self.client.post(
            "/auth/sign-in",
            data=data,
            base_url=BASE_URL,
            # Flask-WTF checks the Referer on HTTPS, as a browser sends it.
            headers={
                "Referer": f"{BASE_URL}/auth/sign-in",
                "X-Forwarded-For": forwarded_for or address,
            },
        )

    def sign_user(self, body, *, address="10.0.0.1", origin=None):
        headers = {"X-Forwarded-For": address}
        if origin:
            headers["Origin"] = origin
        return self.client.post("/auth/sign-user", json=body, base_url=BASE_URL, headers=headers)


def resources_of(app):
    with app.app_context():
        return resources()
