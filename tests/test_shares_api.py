"""Share links without the stack: the API, the link page, the CLI, the table and its migration.

Real Redis, real SQLite and PostgreSQL, real bcrypt, and a real Orthanc: Debian's, with
no plugin (the token service only asks it whether a study is stored, and our plugin
would want the policy service behind it; tests/test_shares_stack.py asks the stack's
Orthanc, plugin and all). The services are Flask test clients (tests/test_token_api.py,
tests/test_login_service.py). Every refusal has a row; the token and the PIN never
reach a log line.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import sqlalchemy as sa
from alembic import command
from click.testing import CliRunner
from pydicom.uid import generate_uid
from sqlalchemy.exc import IntegrityError

from services.admin.cli import main as admin_cli
from services.domain.passwords import hash_password
from services.domain.shares import DEFAULT_LIFETIME, MAX_LIFETIME, ShareRecord
from services.domain.tokens import TokenCodec, TokenInvalid, TokenKind
from services.login_service import create_app as create_login
from services.settings import PROJECT_DIR
from services.stores.accounts import find_user, identity, revoke_all_tokens
from services.stores.db import Database, make_engine
from services.stores.models import User
from services.stores.oauth_clients import remove_client
from services.stores.schema import alembic_config, upgrade
from services.stores.share_table import ShareTable
from services.stores.shares import (
    CLI_CREATOR,
    create_share,
    find_share,
    list_shares,
    revoke_share,
)
from services.token_service import create_app as create_token
from tests.support.apps import closing
from tests.support.dicomweb import encode, wheel_dataset
from tests.support.oidc import Provider
from tests.support.orthanc import OrthancServer
from tests.support.processes import free_port

BASE_URL = "https://localhost"
ALLOWED = "https://viewer.zhiva.ai"
PASSWORD = "Shares-Passw0rd!"
SHARE_ID = re.compile(r"[0-9a-f]{32}")
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


# --- Orthanc, the apps, the people -------------------------------------------------------


class PlainOrthanc(OrthancServer):
    """Orthanc with no plugin at all, on loopback: what `/tools/lookup` answers."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, webhook_url="")

    def configuration(self) -> dict[str, Any]:
        config = super().configuration()
        del config["ZhivaAuthorization"], config["PythonScript"]
        config["Plugins"] = []
        return config


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlainOrthanc]:
    server = PlainOrthanc(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def study(orthanc: PlainOrthanc) -> tuple[str, str]:
    """A stored study: its StudyInstanceUID and Orthanc's ID of it."""
    dataset = wheel_dataset("CT_small.dcm")
    answer = requests.post(f"{orthanc.url}/instances", data=encode(dataset), timeout=30)
    assert answer.status_code == 200, answer.text
    return str(dataset.StudyInstanceUID), answer.json()["ParentStudy"]


@pytest.fixture
def config(app_config: dict[str, Any], orthanc: PlainOrthanc) -> dict[str, Any]:
    return {**app_config, "ORTHANC_HTTP_PORT": orthanc.port}


def close_orthanc(app) -> None:
    """Close the Orthanc connection the token service keeps for this thread (a worker's is
    for its life), so no socket is left to the collector (filterwarnings = error)."""
    app.extensions["zhiva_orthanc"].close()


@pytest.fixture
def token_app(config):
    with closing(create_token(config)) as app:
        yield app
        close_orthanc(app)


@pytest.fixture
def api(token_app):
    return token_app.test_client()


@pytest.fixture
def login_app(config):
    with closing(create_login(config)) as app:
        yield app


@pytest.fixture
def page(login_app):
    return login_app.test_client()


@pytest.fixture(scope="session")
def password_hash() -> str:
    return hash_password(PASSWORD)  # one bcrypt hash for every user of the run


class People:
    """Users written straight into the database, and access tokens for them."""

    def __init__(self, app, password_hash: str) -> None:
        self.app = app
        self.res = app.extensions["zhiva"]
        self.password_hash = password_hash

    def add(self, username: str, *, can_edit: bool = False, is_admin: bool = False) -> str:
        with self.res.db.session() as session:
            session.add(
                User(
                    name=username.title(),
                    username=username,
                    password_hash=self.password_hash,
                    can_edit=can_edit,
                    is_admin=is_admin,
                    disabled=False,
                    token_generation=0,
                )
            )
        return self.token(username)

    def token(self, username: str, kind: TokenKind = TokenKind.ACCESS, **kwargs: Any) -> str:
        with self.res.db.session() as session:
            who = identity(find_user(session, username))
        return self.res.codec.issue(kind, who, **kwargs)[0]

    def change(self, username: str, **values: Any) -> None:
        with self.res.db.session() as session:
            user = find_user(session, username)
            for name, value in values.items():
                setattr(user, name, value)


@pytest.fixture
def people(token_app, password_hash) -> People:
    return People(token_app, password_hash)


def bearer(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


def create(api, token: str, body: Any, **headers: str):
    return api.post("/auth/shares", json=body, headers=bearer(token, **headers), base_url=BASE_URL)


def listed(api, token: str) -> list[dict[str, Any]]:
    answer = api.get("/auth/shares", headers=bearer(token), base_url=BASE_URL)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    return answer.get_json()["shares"]


def revoke(api, token: str, share_id: str, **headers: str):
    return api.delete(f"/auth/shares/{share_id}", headers=bearer(token, **headers))


def share_claims(app, token: str) -> dict[str, Any]:
    return app.extensions["zhiva"].codec.verify(token, TokenKind.SHARE)


def stored(app, share_id: str) -> ShareRecord:
    with app.extensions["zhiva"].db.session() as session:
        found = find_share(session, share_id)
    assert found is not None
    return found


def make_share(config: dict[str, Any], study: tuple[str, str], **kwargs: Any) -> ShareRecord:
    """A share written as the API and the CLI write it (services/stores/shares.py)."""
    database = Database(config["DATABASE_URL"])
    try:
        with database.session() as session:
            return create_share(
                session,
                study_uid=study[0],
                study_id=study[1],
                created_by=kwargs.pop("created_by", "ann"),
                **kwargs,
            )
    finally:
        database.engine.dispose()


# --- the API: making, listing, revoking ----------------------------------------------------


def test_an_editor_shares_lists_and_revokes(token_app, api, people, study):
    editor = people.add("ed", can_edit=True)
    before = int(time.time())
    answer = create(api, editor, {"study": study[0], "expiresIn": 3600})
    assert answer.status_code == 201, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    body = answer.get_json()
    assert set(body) == {"id", "url", "token", "expiresAt"}
    share_id = body["id"]
    assert SHARE_ID.fullmatch(share_id)
    public = token_app.extensions["zhiva"].settings.public_base_url
    assert body["url"] == f"{public}/auth/share/{share_id}"
    claims = share_claims(token_app, body["token"])
    assert claims["kind"] == "share" and claims["jti"] == share_id
    assert (claims["study"], claims["studyId"]) == study
    assert before + 3600 <= claims["exp"] <= int(time.time()) + 3600
    assert ISO_UTC.fullmatch(body["expiresAt"])
    assert body["expiresAt"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claims["exp"]))

    record = stored(token_app, share_id)
    assert (record.study_uid, record.study_id, record.created_by) == (*study, "ed")
    assert record.expires_at == claims["exp"] and record.pin_hash is None

    shares = listed(api, editor)
    assert shares == [
        {
            "id": share_id,
            "study": study[0],
            "createdBy": "ed",
            "createdAt": shares[0]["createdAt"],
            "expiresAt": body["expiresAt"],
            "revoked": False,
            "pin": False,
        }
    ]
    assert ISO_UTC.fullmatch(shares[0]["createdAt"])

    revocations = token_app.extensions["zhiva"].revocations
    assert not revocations.is_revoked(share_id)
    gone = revoke(api, editor, share_id)
    assert (gone.status_code, gone.data) == (204, b"")
    assert revocations.is_revoked(share_id)  # what every door checks
    assert stored(token_app, share_id).revoked
    assert listed(api, editor)[0]["revoked"] is True
    assert revoke(api, editor, share_id).status_code == 204  # again: nothing changes


def test_defaults_pin_and_the_largest_lifetime(token_app, api, people, study):
    admin = people.add("root", can_edit=True, is_admin=True)
    plain = create(api, admin, {"study": study[0]}).get_json()
    assert abs(share_claims(token_app, plain["token"])["exp"] - time.time() - DEFAULT_LIFETIME) < 5
    longest = create(api, admin, {"study": study[0], "expiresIn": MAX_LIFETIME})
    assert longest.status_code == 201
    with_pin = create(api, admin, {"study": study[0], "pin": "123456"}).get_json()
    record = stored(token_app, with_pin["id"])
    assert record.pin_hash and record.pin_hash.startswith("$2") and "123456" not in record.pin_hash
    pins = {share["id"]: share["pin"] for share in listed(api, admin)}
    assert pins == {plain["id"]: False, longest.get_json()["id"]: False, with_pin["id"]: True}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "study must be a StudyInstanceUID"),
        ({"study": "abc"}, "study must be a StudyInstanceUID"),
        ({"study": "1.2."}, "study must be a StudyInstanceUID"),
        ({"study": "1" * 65}, "study must be a StudyInstanceUID"),
        ({"study": 12345}, "study must be a StudyInstanceUID"),
        ({"study": "1.2.3", "expiresIn": 0}, "expiresIn must be a whole number"),
        ({"study": "1.2.3", "expiresIn": -5}, "expiresIn must be a whole number"),
        ({"study": "1.2.3", "expiresIn": MAX_LIFETIME + 1}, "expiresIn must be a whole number"),
        ({"study": "1.2.3", "expiresIn": "3600"}, "expiresIn must be a whole number"),
        ({"study": "1.2.3", "expiresIn": 3600.5}, "expiresIn must be a whole number"),
        ({"study": "1.2.3", "expiresIn": True}, "expiresIn must be a whole number"),
        ({"study": "1.2.3", "pin": "123"}, "pin must be 4 to 12 digits"),
        ({"study": "1.2.3", "pin": "12ab"}, "pin must be 4 to 12 digits"),
        ({"study": "1.2.3", "pin": "1" * 13}, "pin must be 4 to 12 digits"),
        ({"study": "1.2.3", "pin": 1234}, "pin must be 4 to 12 digits"),
        (["1.2.3"], "The body must be a JSON object"),
        ("1.2.3", "The body must be a JSON object"),
    ],
)
def test_bad_input_is_a_400(token_app, api, people, body, message):
    editor = people.add("ed", can_edit=True)
    answer = create(api, editor, body)
    assert answer.status_code == 400, answer.text
    assert answer.get_json()["message"].startswith(message)
    assert listed(api, editor) == []


def test_a_body_that_is_not_json_is_a_400(api, people):
    editor = people.add("ed", can_edit=True)
    answer = api.post("/auth/shares", data="study=1.2.3", headers=bearer(editor))
    assert (answer.status_code, answer.get_json()) == (
        400,
        {"message": "The body must be a JSON object"},
    )


def test_a_study_the_pacs_does_not_have_is_a_404(api, people):
    editor = people.add("ed", can_edit=True)
    answer = create(api, editor, {"study": generate_uid()})
    assert (answer.status_code, answer.get_json()) == (404, {"message": "Study not found"})
    assert listed(api, editor) == []


def test_orthanc_down_is_a_503(app_config, password_hash):
    with closing(create_token({**app_config, "ORTHANC_HTTP_PORT": free_port()})) as app:
        people = People(app, password_hash)
        editor = people.add("ed", can_edit=True)
        answer = create(app.test_client(), editor, {"study": "1.2.3"})
        close_orthanc(app)
        assert answer.status_code == 503
        assert answer.headers["Retry-After"] == "5"
        assert "PACS does not answer" in answer.get_json()["message"]


def _viewer(people: People) -> str:
    return people.add("vic")


def _disabled(people: People) -> str:
    token = people.add("dis", can_edit=True)
    people.change("dis", disabled=True)
    return token


def _old_generation(people: People) -> str:
    token = people.add("gen", can_edit=True)
    with people.res.db.session() as session:
        revoke_all_tokens(session, "gen")
    return token


def _demoted(people: People) -> str:
    token = people.add("dem", can_edit=True)
    people.change("dem", can_edit=False)  # the token still says editor
    return token


def _deleted(people: People) -> str:
    token = people.add("del", can_edit=True)
    with people.res.db.session() as session:
        session.delete(find_user(session, "del"))
    return token


def _revoked_jti(people: People) -> str:
    token = people.add("rev", can_edit=True)
    claims = people.res.codec.verify(token, TokenKind.ACCESS)
    people.res.revocations.revoke(claims["jti"], claims["exp"])
    return token


def _refresh_token(people: People) -> str:
    people.add("ref", can_edit=True)
    return people.token("ref", TokenKind.REFRESH)


def _auth_token(people: People) -> str:
    people.add("aut", can_edit=True)
    return people.token("aut", TokenKind.AUTH)


def _expired(people: People) -> str:
    people.add("old", can_edit=True)
    return people.token("old", now=int(time.time()) - 2 * 24 * 3600)


def _forged(people: People) -> str:
    token = people.add("fgd", can_edit=True)
    return token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")


@pytest.mark.parametrize(
    ("make_token", "status", "message"),
    [
        (_viewer, 403, "Viewers cannot share studies"),
        (_demoted, 403, "Viewers cannot share studies"),
        (_disabled, 403, "Invalid Token"),
        (_old_generation, 403, "Invalid Token"),
        (_deleted, 403, "Invalid Token"),
        (_revoked_jti, 403, "Invalid Token"),
        (_refresh_token, 403, "Invalid Token"),
        (_auth_token, 403, "Invalid Token"),
        (_forged, 403, "Invalid Token"),
        (_expired, 401, "Token Expired"),
    ],
)
def test_refused_callers(api, people, study, make_token, status, message):
    answer = create(api, make_token(people), {"study": study[0]})
    assert (answer.status_code, answer.get_json()) == (status, {"message": message})


def test_no_token_and_foreign_origins(api, people, study):
    missing = api.post("/auth/shares", json={"study": study[0]})
    assert (missing.status_code, missing.get_json()) == (401, {"message": "Missing Token"})
    editor = people.add("ed", can_edit=True)
    foreign = create(api, editor, {"study": study[0]}, Origin="https://evil.example.com")
    assert (foreign.status_code, foreign.get_json()) == (403, {"message": "Origin not allowed"})
    assert "Access-Control-Allow-Origin" not in foreign.headers
    bound = people.token("ed", audience="https://other.zhiva.ai")
    elsewhere = create(api, bound, {"study": study[0]}, Origin=ALLOWED)
    assert (elsewhere.status_code, elsewhere.get_json()) == (403, {"message": "Invalid Token"})
    at_home = create(api, bound, {"study": study[0]}, Origin="https://other.zhiva.ai")
    assert at_home.status_code == 201
    assert at_home.headers["Access-Control-Allow-Origin"] == "https://other.zhiva.ai"


def test_cors_preflight_allows_delete_for_allowed_origins_only(api):
    path = f"/auth/shares/{uuid.uuid4().hex}"
    preflight = api.options(
        path, headers={"Origin": ALLOWED, "Access-Control-Request-Method": "DELETE"}
    )
    assert preflight.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "DELETE" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    listing = api.options("/auth/shares", headers={"Origin": ALLOWED})
    assert "POST" in listing.headers["Access-Control-Allow-Methods"]
    foreign = api.options(path, headers={"Origin": "https://evil.example.com"})
    assert "Access-Control-Allow-Origin" not in foreign.headers


def test_who_sees_and_revokes_which_share(token_app, api, people, study):
    ann = people.add("ann", can_edit=True)
    bob = people.add("bob", can_edit=True)
    admin = people.add("root", can_edit=True, is_admin=True)
    viewer = people.add("vic")
    ann_share = create(api, ann, {"study": study[0]}).get_json()["id"]
    bob_share = create(api, bob, {"study": study[0]}).get_json()["id"]

    assert [s["id"] for s in listed(api, ann)] == [ann_share]
    assert [s["id"] for s in listed(api, bob)] == [bob_share]
    assert {s["id"] for s in listed(api, admin)} == {ann_share, bob_share}
    assert listed(api, viewer) == []

    # Another user's share is not found, exactly like no share, and stays as it was.
    for share_id in (bob_share, uuid.uuid4().hex, "not-an-id"):
        refused = revoke(api, ann, share_id)
        assert (refused.status_code, refused.get_json()) == (404, {"message": "Share not found"})
    assert not stored(token_app, bob_share).revoked
    assert revoke(api, viewer, ann_share).status_code == 404

    # A creator demoted to viewer still revokes their own; an admin revokes anyone's.
    people.change("ann", can_edit=False)
    assert revoke(api, ann, ann_share).status_code == 204
    assert revoke(api, admin, bob_share).status_code == 204
    assert all(s["revoked"] for s in listed(api, admin))
    assert revoke(api, "", ann_share).status_code == 401


def test_oidc_access_tokens_are_judged_as_the_policy_judges_them(config, token_app, study):
    with closing(create_login(config)) as login:
        provider = Provider(login, token_app)
        provider.client()
        provider.user("ann", can_edit=True)
        editor = provider.tokens()["access_token"]
        api = token_app.test_client()
        made = create(api, editor, {"study": study[0]}, Origin="https://localhost:3000")
        assert made.status_code == 201, made.text
        assert stored(token_app, made.get_json()["id"]).created_by == "ann"
        assert [s["id"] for s in listed(api, editor)] == [made.get_json()["id"]]

        # Not the client's origin (allowed in general, though).
        elsewhere = create(api, editor, {"study": study[0]}, Origin=ALLOWED)
        assert (elsewhere.status_code, elsewhere.get_json()) == (403, {"message": "Invalid Token"})

        provider.user("ann", can_edit=False)  # demoted since the token was issued
        demoted = create(api, editor, {"study": study[0]})
        assert demoted.get_json() == {"message": "Viewers cannot share studies"}

        provider.user("ann", can_edit=True)
        database = provider.database()
        try:
            with database.session() as session:
                remove_client(session, "app")
        finally:
            database.engine.dispose()
        removed = create(api, editor, {"study": study[0]})
        assert (removed.status_code, removed.get_json()) == (403, {"message": "Invalid Token"})


def test_log_lines_name_the_share_and_never_its_token(token_app, api, people, study, caplog):
    editor = people.add("ed", can_edit=True)
    with caplog.at_level(logging.INFO, logger="zhiva"):
        made = create(api, editor, {"study": study[0], "pin": "918273"}).get_json()
        assert revoke(api, editor, made["id"]).status_code == 204
    lines = [record.getMessage() for record in caplog.records]
    created = [line for line in lines if "created" in line]
    revoked = [line for line in lines if "revoked by" in line]
    assert len(created) == len(revoked) == 1
    for line in created + revoked:
        assert made["id"] in line and study[0] in line and "ed" in line
    text = "\n".join(lines)
    assert made["token"] not in text and editor not in text and "918273" not in text


# --- the link page (login service) ---------------------------------------------------------

CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def location_query(response) -> dict[str, list[str]]:
    location = response.headers["Location"]
    assert urlsplit(location).path == "/viewer/share/viewer"
    return parse_qs(urlsplit(location).query)


def assert_page_headers(response) -> None:
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert "form-action 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"


def test_a_link_without_pin_opens_the_viewer(config, login_app, page, study, caplog):
    share = make_share(config, study, lifetime=3600)
    with caplog.at_level(logging.INFO, logger="zhiva"):
        answer = page.get(f"/auth/share/{share.id}", base_url=BASE_URL)
    assert answer.status_code == 303
    assert answer.headers["Cache-Control"] == "no-store"
    query = location_query(answer)
    assert query["StudyInstanceUIDs"] == [study[0]]
    token = query["token"][0]
    claims = login_app.extensions["zhiva"].codec.verify(token, TokenKind.SHARE)
    assert (claims["jti"], claims["study"], claims["studyId"]) == (share.id, *study)
    assert claims["exp"] == share.expires_at
    opened = [r.getMessage() for r in caplog.records if "opened" in r.getMessage()]
    assert opened and share.id in opened[0]
    assert token not in caplog.text


@pytest.mark.parametrize(
    ("state", "status", "words"),
    [
        ("unknown", 404, "This link is unknown"),
        ("malformed", 404, "This link is unknown"),
        ("revoked", 410, "This link was revoked"),
        ("expired", 410, "This link has expired"),
    ],
)
def test_links_that_do_not_open(config, page, study, state, status, words):
    if state == "unknown":
        path = uuid.uuid4().hex
    elif state == "malformed":
        path = "not-a-share/at%2Fall" + "x" * 100
    elif state == "revoked":
        share = make_share(config, study, pin="4321")
        database = Database(config["DATABASE_URL"])
        try:
            with database.session() as session:
                revoke_share(session, share.id)
        finally:
            database.engine.dispose()
        path = share.id
    else:
        path = make_share(config, study, lifetime=60, now=int(time.time()) - 120).id
    for answer in (
        page.get(f"/auth/share/{path}", base_url=BASE_URL),
        page.post(f"/auth/share/{path}", data={"pin": "4321"}, base_url=BASE_URL),
    ):
        assert answer.status_code == status
        assert answer.mimetype == "text/html"
        assert words in answer.text
        assert "Location" not in answer.headers
        assert_page_headers(answer)


class PinPage:
    """The PIN form driven as a browser drives it: GET it, POST it back with its CSRF token."""

    def __init__(self, page, share_id: str) -> None:
        self.page = page
        self.path = f"/auth/share/{share_id}"

    def form(self):
        return self.page.get(self.path, base_url=BASE_URL)

    def submit(self, pin: str, *, csrf: bool = True):
        data = {"pin": pin}
        if csrf:
            found = CSRF.search(self.form().text)
            assert found
            data["csrf_token"] = found.group(1)
        return self.page.post(
            self.path, data=data, base_url=BASE_URL, headers={"Referer": BASE_URL + self.path}
        )


def test_a_link_with_a_pin_asks_for_it(config, login_app, page, study):
    share = make_share(config, study, pin="246810")
    pin_page = PinPage(page, share.id)
    form = pin_page.form()
    assert form.status_code == 200
    assert_page_headers(form)
    assert 'name="pin"' in form.text and "csrf_token" in form.text
    assert "Location" not in form.headers and "246810" not in form.text

    no_csrf = pin_page.submit("246810", csrf=False)
    assert no_csrf.status_code == 400 and "This form expired" in no_csrf.text

    empty = pin_page.submit("")
    assert empty.status_code == 400 and "Enter the PIN" in empty.text

    wrong = pin_page.submit("111111")
    assert wrong.status_code == 400
    assert "Wrong PIN" in wrong.text and "4 more wrong PINs" in wrong.text
    assert_page_headers(wrong)

    right = pin_page.submit("246810")
    assert right.status_code == 303
    token = location_query(right)["token"][0]
    claims = login_app.extensions["zhiva"].codec.verify(token, TokenKind.SHARE)
    assert (claims["jti"], claims["study"]) == (share.id, study[0])


def test_five_wrong_pins_lock_the_link_for_a_day(config, page, study, caplog):
    share = make_share(config, study, pin="97531")
    other = make_share(config, study, pin="97531")
    pin_page = PinPage(page, share.id)
    with caplog.at_level(logging.INFO, logger="zhiva"):
        for attempt in range(1, 5):
            answer = pin_page.submit(f"0000{attempt}")
            assert answer.status_code == 400, attempt
        fifth = pin_page.submit("00005")
    assert fifth.status_code == 429
    assert "locked" in fifth.text and "5" in fifth.text
    assert 23 * 3600 < int(fifth.headers["Retry-After"]) <= 24 * 3600
    assert_page_headers(fifth)
    # Locked for everyone, the right PIN and the form included.
    assert pin_page.form().status_code == 429
    assert page.post(f"/auth/share/{share.id}", data={"pin": "97531"}).status_code == 429
    # Per share: another share of the same study opens.
    assert PinPage(page, other.id).submit("97531").status_code == 303
    assert "97531" not in caplog.text and "0000" not in caplog.text
    assert share.id in caplog.text


def test_guesses_sent_at_once_get_no_more_than_five_checks(config, login_app, study):
    share = make_share(config, study, pin="86420")
    # Each guesser is a browser of its own, with its own CSRF token, all posting together.
    pages = [PinPage(login_app.test_client(), share.id) for _ in range(12)]
    forms = []
    for pin_page in pages:
        found = CSRF.search(pin_page.form().text)
        assert found
        forms.append(found.group(1))
    statuses: list[int] = []

    def guess(pin_page: PinPage, csrf_token: str, n: int) -> None:
        answer = pin_page.page.post(
            pin_page.path,
            data={"pin": f"1000{n:02d}", "csrf_token": csrf_token},
            base_url=BASE_URL,
            headers={"Referer": BASE_URL + pin_page.path},
        )
        statuses.append(answer.status_code)

    threads = [
        threading.Thread(target=guess, args=(pin_page, token, n))
        for n, (pin_page, token) in enumerate(zip(pages, forms, strict=True))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Four answers say "wrong", the fifth locks; all the rest were never checked.
    assert sorted(statuses) == [400] * 4 + [429] * 8
    # Locked for everyone now, the right PIN included: the page is the lock's.
    assert PinPage(login_app.test_client(), share.id).form().status_code == 429


# --- the stores: writer, driver reader, migration -----------------------------------------


def test_migration_0004_up_and_down(empty_database):
    config = alembic_config(empty_database)
    command.upgrade(config, "0003")
    engine = make_engine(empty_database)
    try:
        assert not sa.inspect(engine).has_table("shares")
        command.upgrade(config, "0004")
        inspector = sa.inspect(engine)
        columns = {c["name"]: c["nullable"] for c in inspector.get_columns("shares")}
        assert columns == {
            "id": False,
            "study_uid": False,
            "study_id": False,
            "created_by": False,
            "created_at": False,
            "expires_at": False,
            "revoked_at": True,
            "pin_hash": True,
        }
        assert inspector.get_pk_constraint("shares")["constrained_columns"] == ["id"]
        assert {i["name"]: i["column_names"] for i in inspector.get_indexes("shares")} == {
            "ix_shares_created_by": ["created_by"]
        }
        shares = sa.table(
            "shares",
            *(sa.column(n) for n in ("id", "study_uid", "study_id", "created_by")),
            sa.column("created_at", sa.DateTime(timezone=True)),
            sa.column("expires_at", sa.DateTime(timezone=True)),
        )
        now = sa.func.now()
        row = {"id": "a" * 32, "study_uid": "1.2", "study_id": "x", "created_by": "ann"}
        with engine.begin() as connection:
            connection.execute(shares.insert().values(created_at=now, expires_at=now), [row])
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(shares.insert().values(created_at=now, expires_at=now), [row])
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(shares.insert().values(created_at=now), [{**row, "id": "b" * 32}])

        command.downgrade(config, "0003")
        assert not sa.inspect(engine).has_table("shares")
        assert sa.inspect(engine).has_table("oauth_clients")
        command.upgrade(config, "head")
        assert sa.inspect(engine).has_table("shares")
    finally:
        engine.dispose()


def test_writer_and_driver_reader_agree(empty_database):
    upgrade(empty_database)
    database = Database(empty_database)
    table = ShareTable(empty_database)
    try:
        moment = int(time.time())
        with database.session() as session:
            plain = create_share(
                session, study_uid="1.2.3", study_id="s1", created_by="ann", now=moment
            )
            pinned = create_share(
                session,
                study_uid="1.2.4",
                study_id="s2",
                created_by=CLI_CREATOR,
                lifetime=60,
                pin="4455",
                now=moment + 1,
            )
        assert plain.expires_at == moment + DEFAULT_LIFETIME
        assert (pinned.expires_at, pinned.created_at) == (moment + 61, moment + 1)
        for share in (plain, pinned):
            assert table.find(share.id) == share
        assert table.find(uuid.uuid4().hex) is None
        assert table.find("'; DROP TABLE shares; --") is None
        with database.session() as session:
            assert list_shares(session, None) == [pinned, plain]  # the newest first
            assert list_shares(session, "ann") == [plain]
            assert list_shares(session, "nobody") == []
            first = revoke_share(session, plain.id)
            assert first is not None and first.revoked
        with database.session() as session:
            again = revoke_share(session, plain.id)
            assert again == first  # revoked_at kept from the first time
            assert revoke_share(session, uuid.uuid4().hex) is None
        assert table.find(plain.id) == first
    finally:
        table.close()
        database.engine.dispose()


def test_the_driver_reader_loads_no_sqlalchemy(config, study):
    """The login service reads shares as it reads users (tests/test_policy_users.py)."""
    share = make_share(config, study)
    script = (
        "import json, sys\n"
        "from services.stores.share_table import ShareTable\n"
        "import services.login_service.shares\n"
        "table = ShareTable(sys.argv[1])\n"
        "found = table.find(sys.argv[2])\n"
        "table.close()\n"
        "print(json.dumps({'modules': sorted(sys.modules), 'study': found.study_uid}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, config["DATABASE_URL"], share.id],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    answer = json.loads(result.stdout)
    assert answer["study"] == study[0]
    for package in ("sqlalchemy", "alembic"):
        assert not [m for m in answer["modules"] if m.split(".")[0] == package], package


# --- zhiva-admin shares ----------------------------------------------------------------------


@pytest.fixture
def cli(config):
    env = {k: str(v) for k, v in config.items() if k != "TESTING"}
    runner = CliRunner()

    def run(*args: str, stdin: str | None = None):
        return runner.invoke(admin_cli, ["shares", *args], env=env, input=stdin)

    return run


def test_cli_create_list_revoke(cli, config, token_app, study):
    made = cli("create", "--study", study[0], "--expires", "2h")
    assert made.exit_code == 0, made.output
    answer = json.loads(made.stdout)
    assert set(answer) == {"id", "url", "token", "expiresAt"}
    public = token_app.extensions["zhiva"].settings.public_base_url
    assert answer["url"] == f"{public}/auth/share/{answer['id']}"
    claims = share_claims(token_app, answer["token"])
    assert (claims["jti"], claims["study"], claims["studyId"]) == (answer["id"], *study)
    assert abs(claims["exp"] - time.time() - 7200) < 5

    pinned = cli("create", "--study", study[0], "--pin-stdin", stdin="8642\n")
    assert pinned.exit_code == 0, pinned.output
    pinned_id = json.loads(pinned.stdout)["id"]
    prompted = cli("create", "--study", study[0], "--pin", stdin="13579\n13579\n")
    assert prompted.exit_code == 0, prompted.output
    assert "13579" not in prompted.stdout

    listing = cli("list")
    assert listing.exit_code == 0
    lines = [json.loads(line) for line in listing.stdout.splitlines()]
    assert {line["id"]: line["pin"] for line in lines} == {
        answer["id"]: False,
        pinned_id: True,
        json.loads(prompted.stdout)["id"]: True,
    }
    assert {line["createdBy"] for line in lines} == {CLI_CREATOR}
    assert answer["token"] not in listing.output and "8642" not in listing.output
    assert "$2" not in listing.output  # no PIN hash

    revoked = cli("revoke", answer["id"])
    assert revoked.exit_code == 0, revoked.output
    assert token_app.extensions["zhiva"].revocations.is_revoked(answer["id"])
    assert stored(token_app, answer["id"]).revoked
    states = {
        json.loads(line)["id"]: json.loads(line)["revoked"]
        for line in cli("list").stdout.splitlines()
    }
    assert states == {
        answer["id"]: True,
        pinned_id: False,
        json.loads(prompted.stdout)["id"]: False,
    }


def test_cli_list_of_none(cli):
    listing = cli("list")
    assert (listing.exit_code, listing.stdout) == (0, "")
    assert "no shares" in listing.stderr


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("create", "--study", "1.2."), None, "study must be a StudyInstanceUID"),
        (("create", "--study", "1.2.3", "--expires", "0"), None, "is not a duration"),
        (("create", "--study", "1.2.3", "--expires", "2y"), None, "is not a duration"),
        (("create", "--study", "1.2.3", "--expires", "400d"), None, "expiresIn must be"),
        (("create", "--study", "1.2.3", "--pin-stdin"), "12\n", "pin must be 4 to 12 digits"),
        (("create", "--study", "1.2.3", "--pin-stdin"), "\n", "no PIN on standard input"),
        (("create", "--study", "1.2.3"), None, "no study 1.2.3 in the PACS"),
        (("revoke", "0" * 32), None, "no share"),
        (("revoke", "nonsense"), None, "no share"),
    ],
)
def test_cli_refusals(cli, args, stdin, message):
    result = cli(*args, stdin=stdin)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert cli("list").stdout == ""


def test_cli_without_orthanc_or_redis(config, study):
    env = {k: str(v) for k, v in config.items() if k != "TESTING"}
    runner = CliRunner()
    no_orthanc = {**env, "ORTHANC_HTTP_PORT": str(free_port())}
    result = runner.invoke(admin_cli, ["shares", "create", "--study", study[0]], env=no_orthanc)
    assert result.exit_code == 1 and "Orthanc does not answer" in result.output

    share = make_share(config, study)
    no_redis = {**env, "REDIS_PORT": str(free_port())}
    result = runner.invoke(admin_cli, ["shares", "revoke", share.id], env=no_redis)
    assert result.exit_code == 1 and "Nothing was revoked" in result.output
    database = Database(config["DATABASE_URL"])
    try:
        with database.session() as session:
            assert not find_share(session, share.id).revoked  # rolled back with Redis
    finally:
        database.engine.dispose()


def test_a_share_token_is_signed_by_the_services_key(config, token_app, study):
    """The CLI's and the login service's codecs are the token service's key: one verifier."""
    share = make_share(config, study)
    with closing(create_login(config)) as login:
        token = login.test_client().get(f"/auth/share/{share.id}").headers["Location"]
    minted = parse_qs(urlsplit(token).query)["token"][0]
    verifier = TokenCodec.from_settings(token_app.extensions["zhiva"].settings, can_sign=False)
    assert verifier.verify(minted, TokenKind.SHARE)["jti"] == share.id
    with pytest.raises(TokenInvalid):
        verifier.verify(minted, TokenKind.ACCESS)  # a share token is no access token
