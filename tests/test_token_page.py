"""The /auth/token admin page, step by step through the Flask test client, CSRF enabled.

The client talks HTTPS (the session cookie is `Secure`, as behind nginx) and
takes each form's CSRF token from the page, as a browser does.
"""

from __future__ import annotations

import html
import re

import pytest

from services.domain.passwords import STRONG_PASSWORD_RULE
from services.domain.tokens import TokenKind
from services.stores.accounts import find_user, identity, save_user
from services.stores.models import User
from services.token_service import create_app
from tests.conftest import ADMIN_PASSWORD
from tests.support.apps import closing, signs_in
from tests.support.tokens import bearer, policy_grants, redeemed, refreshes

USER_PASSWORD = "User-Passw0rd!"
BASE = "https://localhost"


@pytest.fixture
def app(app_config):
    with closing(create_app(app_config)) as app:
        yield app


@pytest.fixture
def client(app):
    return app.test_client()


def get(client, path):
    return client.get(path, base_url=BASE)


def post(client, path, data):
    return client.post(path, data=data, base_url=BASE)


def csrf_token(page: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert match, "no CSRF token in the form"
    return match.group(1)


def text(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def visible(response) -> str:
    """The page's text as a reader sees it: tags dropped, white space collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", text(response)).split())


def details(client, **changes):
    page = get(client, "/auth/token").get_data(as_text=True)
    data = {
        "csrf_token": csrf_token(page),
        "name": "Ann Example",
        "username": "Ann",
        "can_edit": "y",
        "admin_password": ADMIN_PASSWORD,
    }
    data.update(changes)
    return post(client, "/auth/token", {k: v for k, v in data.items() if v is not None})


def confirm(client, password=USER_PASSWORD, again=None):
    page = get(client, "/auth/token/confirm")
    assert page.status_code == 200
    return post(
        client,
        "/auth/token/confirm",
        {
            "csrf_token": csrf_token(page.get_data(as_text=True)),
            "user_password": password,
            "user_password_again": password if again is None else again,
        },
    )


def page_token(response) -> str:
    """The auth token the last step shows."""
    match = re.search(r'<textarea id="token-value"[^>]*>([^<]+)</textarea>', text(response))
    assert match, "no token on the page"
    return match.group(1)


def users_count(app) -> int:
    with app.extensions["zhiva"].db.session() as session:
        return session.query(User).count()


def test_first_step_page_is_self_contained_and_protected(client):
    response = get(client, "/auth/token")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    for label in (
        "Token owner name",
        "Token owner username",
        "Can edit PACS resources?",
        "Admin password",
    ):
        assert label in page
    assert csrf_token(page)
    # No CDN, no internet: every script and stylesheet is ours.
    assert re.findall(r'(?:src|href)="(https?:)?//', page) == []
    assert "/auth/static/token/token.css" in page
    for asset in ("token.css", "copy.js"):
        with get(client, f"/auth/static/token/{asset}") as static:
            assert static.status_code == 200
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"


def test_create_user_flow_ends_with_the_token_its_expiry_and_a_copy_button(app, client):
    response = details(client)
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/auth/token/confirm")
    confirm_page = visible(get(client, "/auth/token/confirm"))
    assert "There is no user with the username ann" in confirm_page
    assert "read and edit" in confirm_page

    response = confirm(client)
    assert response.status_code == 200
    page = text(response)
    token = page_token(response)
    claims = app.extensions["zhiva"].codec.verify(token, TokenKind.AUTH)
    assert claims["username"] == "ann" and claims["canEditResource"] is True
    assert 'id="copy-token"' in page and "/auth/static/token/copy.js" in page
    assert "It expires on" in visible(response) and "(in 24 hours)" in page
    assert response.headers["Cache-Control"] == "no-store"
    with app.extensions["zhiva"].db.session() as session:
        assert signs_in(session, "ann", USER_PASSWORD).can_edit

    # The step is done: nothing is pending, so no second token from a reload.
    assert get(client, "/auth/token/confirm").status_code == 303


def test_a_replayed_session_cookie_cannot_confirm_twice(app, client):
    with app.extensions["zhiva"].db.session() as session:
        session.add(
            User(
                name="Ann",
                username="ann",
                password_hash="x",
                can_edit=False,
                is_admin=False,
                disabled=False,
                token_generation=0,
            )
        )
    assert details(client).status_code == 303
    page = get(client, "/auth/token/confirm").get_data(as_text=True)
    saved = client.get_cookie("zhiva_token", domain="localhost")
    form = {
        "csrf_token": csrf_token(page),
        "user_password": USER_PASSWORD,
        "user_password_again": USER_PASSWORD,
    }
    first = post(client, "/auth/token/confirm", form)
    assert first.status_code == 200
    client.set_cookie("zhiva_token", saved.value, domain="localhost", secure=True)
    other = "Replay-Passw0rd!"
    replay = post(
        client,
        "/auth/token/confirm",
        {**form, "user_password": other, "user_password_again": other},
    )
    assert replay.status_code == 400
    assert "already used" in text(replay) and "<textarea" not in text(replay)
    # The refused replay wrote nothing: the first password stands, its token still works.
    with app.extensions["zhiva"].db.session() as session:
        assert signs_in(session, "ann", other) is None
        assert signs_in(session, "ann", USER_PASSWORD) is not None
    redeemed(client, page_token(first))


def test_overwrite_flow_says_the_user_exists_and_keeps_admin_flag(app, client):
    with app.extensions["zhiva"].db.session() as session:
        session.add(
            User(
                name="Ann Old",
                username="ann",
                password_hash="x",
                can_edit=True,
                is_admin=True,
                disabled=False,
                token_generation=3,
            )
        )
    assert details(client, can_edit=None).status_code == 303
    page = visible(get(client, "/auth/token/confirm"))
    assert "username ann already exists" in page and "read only" in page
    assert confirm(client).status_code == 200
    with app.extensions["zhiva"].db.session() as session:
        user = signs_in(session, "ann", USER_PASSWORD)
        assert user.name == "Ann Example" and user.is_admin and not user.can_edit


class HeldTokens:
    """ann, an editor, holding an access and a refresh token and an auth token not yet redeemed."""

    def __init__(self, app, client) -> None:
        self.client = client
        res = app.extensions["zhiva"]
        with res.db.session() as session:
            who = identity(
                save_user(
                    session, name="Ann Old", username="ann", password=USER_PASSWORD, can_edit=True
                )
            )
        self.access, self.refresh = redeemed(client, res.codec.issue(TokenKind.AUTH, who)[0])
        self.unredeemed = res.codec.issue(TokenKind.AUTH, who)[0]

    def still_work(self, app_config) -> tuple[bool, bool, bool]:
        """(refresh token refreshes, policy grants the access token, auth token redeems)."""
        redeem = self.client.post(
            "/auth/generate-access-token", headers=bearer(self.unredeemed)
        ).status_code
        return (
            refreshes(self.client, self.refresh),
            policy_grants(app_config, self.access),
            redeem == 200,
        )


@pytest.mark.parametrize(
    "changes",
    [{"can_edit": None}, {}],
    ids=["rights and password", "password"],
)
def test_overwriting_on_the_page_revokes_the_users_tokens(app_config, app, client, changes):
    held = HeldTokens(app, client)
    assert details(client, **changes).status_code == 303
    assert "Every token the user holds stops working" in visible(get(client, "/auth/token/confirm"))
    response = confirm(client, "Another-Passw0rd#")
    assert response.status_code == 200
    assert held.still_work(app_config) == (False, False, False)
    # The token the page shows is of the new generation: it redeems and opens the PACS.
    access, refresh = redeemed(client, page_token(response))
    assert refreshes(client, refresh) and policy_grants(app_config, access)


@pytest.mark.parametrize(
    "refusal", ["another user created", "wrong admin password", "weak user password"]
)
def test_creating_another_user_or_a_refused_overwrite_on_the_page_leaves_tokens_working(
    app_config, app, client, refusal
):
    """The control twin of the test above: only an overwrite that happens revokes."""
    held = HeldTokens(app, client)
    if refusal == "another user created":
        assert details(client, username="bob").status_code == 303
        assert confirm(client).status_code == 200
    elif refusal == "wrong admin password":
        assert details(client, admin_password="Wrong-Passw0rd!").status_code == 400
    else:
        assert details(client).status_code == 303
        assert confirm(client, "weakpassword").status_code == 400
    assert held.still_work(app_config) == (True, True, True)


def test_cancel_forgets_the_request(client):
    assert details(client).status_code == 303
    assert get(client, "/auth/token").status_code == 200  # the Cancel link
    response = get(client, "/auth/token/confirm")
    assert response.status_code == 303 and response.headers["Location"].endswith("/auth/token")


@pytest.mark.parametrize(
    ("password", "again", "message"),
    [
        ("weakpassword", None, STRONG_PASSWORD_RULE),
        ("Short1!", None, STRONG_PASSWORD_RULE),
        (USER_PASSWORD, "User-Passw0rd?", "The two passwords differ"),
    ],
)
def test_user_password_rule_is_enforced_on_the_server(app, client, password, again, message):
    assert details(client).status_code == 303
    response = confirm(client, password, again)
    assert response.status_code == 400
    page = text(response)
    assert message in page and 'aria-invalid="true"' in page and "<textarea" not in page
    assert users_count(app) == 0
    assert confirm(client).status_code == 200  # the request is still pending; fixed, it works


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"admin_password": "Wrong-Passw0rd!"}, "Invalid admin password"),
        ({"admin_password": ""}, "Please enter the admin password"),
        ({"name": ""}, "Please enter who should receive the token"),
        ({"username": "two words"}, "username not valid"),
    ],
)
def test_first_step_refusals(app, client, changes, message):
    response = details(client, **changes)
    assert response.status_code == 400
    assert message in text(response)
    assert get(client, "/auth/token/confirm").status_code == 303  # nothing pending
    assert users_count(app) == 0


def test_disabled_user_is_refused_on_the_page(app, client):
    with app.extensions["zhiva"].db.session() as session:
        session.add(
            User(
                name="Ann",
                username="ann",
                password_hash="x",
                can_edit=False,
                is_admin=False,
                disabled=True,
                token_generation=0,
            )
        )
    response = details(client)
    assert response.status_code == 400 and "User is disabled" in text(response)


@pytest.mark.parametrize("token", [None, "forged-token"])
def test_posts_without_a_valid_csrf_token_are_refused(app, client, token):
    data = {"name": "Ann", "username": "ann", "admin_password": ADMIN_PASSWORD}
    if token:
        data["csrf_token"] = token
    response = post(client, "/auth/token", data)
    assert response.status_code == 400
    assert "please fill it in again" in text(response)
    assert get(client, "/auth/token/confirm").status_code == 303
    # Step 2 too, even with a pending request in the session.
    assert details(client).status_code == 303
    response = post(
        client,
        "/auth/token/confirm",
        {
            "user_password": USER_PASSWORD,
            "user_password_again": USER_PASSWORD,
            **({"csrf_token": token} if token else {}),
        },
    )
    assert response.status_code == 400 and "<textarea" not in text(response)
    assert users_count(app) == 0


def test_csrf_token_of_another_session_is_refused(app, client):
    stolen = csrf_token(get(app.test_client(), "/auth/token").get_data(as_text=True))
    response = post(
        client,
        "/auth/token",
        {"csrf_token": stolen, "name": "Ann", "username": "ann", "admin_password": ADMIN_PASSWORD},
    )
    assert response.status_code == 400


def test_page_throttles_wrong_admin_passwords(client):
    for _ in range(5):
        assert details(client, admin_password="Wrong-Passw0rd!").status_code == 400
    response = details(client)
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
    assert "try again later" in text(response)


def test_page_while_redis_is_down(client, redis_server):
    page = get(client, "/auth/token").get_data(as_text=True)
    redis_server.stop()
    try:
        response = post(
            client,
            "/auth/token",
            {
                "csrf_token": csrf_token(page),
                "name": "Ann",
                "username": "ann",
                "admin_password": ADMIN_PASSWORD,
            },
        )
        assert response.status_code == 503
        assert "unavailable" in text(response) and "<form" in text(response)
    finally:
        redis_server.start()
    assert details(client).status_code == 303


def test_confirm_without_first_step_redirects_to_the_start(client):
    response = get(client, "/auth/token/confirm")
    assert response.status_code == 303 and response.headers["Location"].endswith("/auth/token")


def test_username_is_normalised_before_it_is_shown_and_saved(app, client):
    assert details(client, username="  ANN.Smith ").status_code == 303
    assert confirm(client).status_code == 200
    with app.extensions["zhiva"].db.session() as session:
        assert find_user(session, "ann.smith") is not None
