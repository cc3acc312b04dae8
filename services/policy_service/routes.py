"""The two endpoints of the policy service: the Orthanc webhook and nginx's auth_request check.

Every request that reaches Orthanc passes one of them, so they are
plain WSGI: a framework's request context and URL map would cost several
times the decision itself, and the service loads no Flask at all (its heap
would sit in every policy process). They only parse the request into
an `AccessRequest`, ask the one decision function, write the audit line and
shape the answer; `/healthz` and the 404 for any other path are
`HealthEndpoint`'s.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from services.access.handoff import HEADER as HANDOFF_HEADER
from services.access.handoff import bearer, bound_value, token_of
from services.access.paths import PACS_PREFIX, orthanc_path, split_query
from services.access.permissions import SHARED_READ_CLASS, handoff_scope, overrides_method

from .audit import AuditLog
from .decision import AccessRequest, Decision, PolicyEngine

log = logging.getLogger("zhiva.policy")

WEBHOOK_PATH = "/webhook"
AUTHORIZE_PATH = "/authorize"
HEALTH_PATH = "/healthz"
# Werkzeug's wording, as the other services answer (services/web/app.py).
NOT_FOUND = (
    "The requested URL was not found on the server. If you entered the URL manually "
    "please check your spelling and try again."
)
NOT_ALLOWED = "The method is not allowed for the requested URL."
WEBHOOK_METHODS = frozenset({"get", "post", "put", "delete"})
WEBHOOK_LEVELS = {
    "patient": "patients",
    "study": "studies",
    "series": "series",
    "instance": "instances",
}
MAX_BODY = 64 * 1024
MAX_DRAINED_BODY = 1024 * 1024
NOT_CACHED = [("Cache-Control", "no-store"), ("X-Accel-Expires", "0")]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _string(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    return value if isinstance(value, str) and value else None


def webhook_request(body: Any) -> AccessRequest | None:
    """The access asked by an Orthanc Authorization plugin call, or None when malformed.

    Official plugin: resource levels carry `orthanc-id`/`dicom-uid` and no
    `uri`; then only a GET is a read, anything else needs an editor (what
    Orthanc allows on one resource: modify, anonymize, delete). Our plugin
    also sends `uri`, `origin` and `ip`, and the path table decides.
    """
    if not isinstance(body, dict):
        return None
    method, level = body.get("method"), body.get("level")
    if method not in WEBHOOK_METHODS or (level != "system" and level not in WEBHOOK_LEVELS):
        return None
    uri = _string(body, "uri")
    resource = _string(body, "orthanc-id") or _string(body, "dicom-uid")
    if uri is None:
        if level == "system" or resource is None:
            return None
        # `/` inside an identifier would make a different path: refuse it.
        if "/" in resource or "%" in resource:
            return None
        uri = f"/{WEBHOOK_LEVELS[level]}/{resource}"
        if method == "post":
            uri += "/modify"  # the strictest POST on one resource a viewer could not do
    token = None
    if _string(body, "token-value") is not None:
        token = bearer(body["token-value"]) or body["token-value"].strip()
    path, query = split_query(uri)
    # Our plugin sends the GET arguments as Orthanc parsed them (not decoded): what a share's
    # QIDO names. Joined as Orthanc splits them, so orthanc_arguments reads them back as sent.
    arguments = body.get("get")
    if isinstance(arguments, dict):
        query = "&".join(f"{name}={value}" for name, value in arguments.items())
    return AccessRequest(
        token=token,
        method=method.upper(),
        path=path,
        origin=_string(body, "origin"),
        client=_string(body, "ip"),
        level=level,
        resource=resource,
        via="webhook",
        query=query,
    )


def nginx_request(environ: dict[str, Any]) -> AccessRequest | None:
    """The access nginx asks about (X-Original-Method/-URI), or None when it is not a PACS path."""
    method = (environ.get("HTTP_X_ORIGINAL_METHOD") or "").upper()
    path, query = split_query(environ.get("HTTP_X_ORIGINAL_URI") or "")
    # Only what nginx sends to Orthanc counts: strip the public prefix, refuse the rest.
    if path.startswith(PACS_PREFIX + "/"):
        path = path[len(PACS_PREFIX) :]
    elif path == PACS_PREFIX:
        path = "/"
    else:
        return None
    query_token = None
    if method == "GET" and query:
        values = parse_qs(query).get("token")
        query_token = values[0] if values else None
    token = token_of(environ.get("HTTP_TOKEN"), environ.get("HTTP_AUTHORIZATION"), query_token)
    return AccessRequest(
        token=token,
        method=method,
        path=path,
        origin=environ.get("HTTP_ORIGIN") or None,
        client=environ.get("HTTP_X_REAL_IP") or environ.get("REMOTE_ADDR"),
        via="nginx",
        query=query,
    )


class DecisionEndpoints:
    """WSGI middleware: answers POST /webhook and GET /authorize, passes the rest to `app`."""

    def __init__(
        self, app: WSGIApp, engine: PolicyEngine, audit: AuditLog, handoff_key: bytes | None
    ) -> None:
        self.app = app
        self.engine = engine
        self.audit = audit
        # Without it nginx passes no value on, and Orthanc's plugin decides every request.
        self.handoff_key = handoff_key

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO"), environ.get("REQUEST_METHOD")
        try:
            if path == WEBHOOK_PATH and method == "POST":
                return self.webhook(environ, start_response)
            # Any method: what is judged is X-Original-Method, whatever the subrequest uses.
            if path == AUTHORIZE_PATH:
                return self.authorize(environ, start_response)
        except Exception:  # noqa: BLE001 - fail closed; the client learns nothing internal
            log.exception("policy endpoint %s failed: denying", path)
            if path == WEBHOOK_PATH:
                return _json(start_response, {"granted": False, "validity": 0})
            return _empty(start_response, "403 Forbidden", NOT_CACHED)
        return self.app(environ, start_response)

    def decide(self, access: AccessRequest) -> Decision:
        decision = self.engine.decide(access)
        self.audit.record(access, decision)
        return decision

    def webhook(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Always 200 `{"granted": bool, "validity": seconds}` (docs/PROTOCOLS.md).

        A grant also names the token's effective `role`, so our Orthanc plugin
        can judge the same token's next requests with the same permission
        table (it loads permissions.py) until `validity` runs out, instead of
        one webhook call per new URI. The official plugin ignores the field.
        """
        access = webhook_request(_json_body(environ))
        if access is None:
            log.info("malformed webhook call refused")
            return _json(start_response, {"granted": False, "validity": 0})
        decision = self.decide(access)
        if not decision.granted:
            return _json(start_response, {"granted": False, "validity": 0})
        answer: dict[str, Any] = {"granted": True, "validity": decision.validity}
        if decision.role is not None and decision.validity > 0:
            answer["role"] = decision.role.name.lower()
        return _json(start_response, answer)

    def authorize(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """nginx auth_request: 204 grant, 401 missing or expired token, 403 anything else.

        `Cache-Control: max-age` and `X-Accel-Expires` say how long nginx may
        reuse a grant (never past the token's expiry, a few seconds at most);
        a deny is never to be reused.
        """
        access = nginx_request(environ)
        if access is None:
            decision = Decision(False, 403, "not a PACS path")
            method = environ.get("HTTP_X_ORIGINAL_METHOD") or ""
            self.audit.record(AccessRequest(None, method, "", via="nginx"), decision)
        elif overrides_method(
            environ.get("HTTP_X_HTTP_METHOD_OVERRIDE"),
            split_query(environ.get("HTTP_X_ORIGINAL_URI") or "")[1],
        ):
            # nginx refuses these first (400); judging the request line's method here would
            # grant what Orthanc then runs as another method.
            decision = Decision(False, 403, "method override refused")
            self.audit.record(access, decision)
        else:
            decision = self.decide(access)
        if decision.granted and access is not None:
            # A granted path always has Orthanc's reading (the table refuses the others).
            scope = handoff_scope(access.method, orthanc_path(access.path))
            validity = decision.validity
            if decision.study is not None and scope == SHARED_READ_CLASS:
                # nginx would reuse this grant for every plain read of the token, other
                # studies' too: a share's is reused only within its study's class.
                validity = 0
            headers = [
                # nginx's proxy_cache reads only X-Accel-Expires (it ignores Cache-Control there).
                ("Cache-Control", f"private, max-age={validity}"),
                ("X-Accel-Expires", str(validity)),
            ]
            if not validity:
                headers = list(NOT_CACHED)
            if self.handoff_key is not None:
                value = bound_value(self.handoff_key, access.method, scope, access.token)
                headers.append((HANDOFF_HEADER, value))
            return _empty(start_response, "204 No Content", headers)
        if decision.status == 401:
            return _empty(
                start_response,
                "401 Unauthorized",
                [*NOT_CACHED, ("WWW-Authenticate", 'Bearer realm="zhiva"')],
            )
        return _empty(start_response, "403 Forbidden", NOT_CACHED)


def _json_body(environ: dict[str, Any]) -> Any:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if length > MAX_BODY:
        # Read and drop a body that is too large (up to a bound), so the client gets its
        # answer ("not granted") instead of a connection reset over the unread bytes.
        if length <= MAX_DRAINED_BODY:
            stream = environ["wsgi.input"]
            while length > 0 and (chunk := stream.read(min(length, 65536))):
                length -= len(chunk)
        return None
    if length <= 0:
        return None
    try:
        return json.loads(environ["wsgi.input"].read(length))
    except ValueError:  # not JSON, not UTF-8
        return None


class HealthEndpoint:
    """GET /healthz (what `make up` and supervisord's checks wait for); 404 for any other path.

    The same answer as the other services' `/healthz` (services/web/app.py),
    in the same `{"message": …}` error shape, without Flask (its heap).
    """

    def __init__(self, service: str, checks: dict[str, Callable[[], bool]]) -> None:
        self.service = service
        self.checks = checks

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != HEALTH_PATH:
            return _json(start_response, {"message": NOT_FOUND}, "404 Not Found")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _json(start_response, {"message": NOT_ALLOWED}, "405 Method Not Allowed")
        checks = {name: check() for name, check in self.checks.items()}
        healthy = all(checks.values())
        body = {
            "service": self.service,
            "status": "ok" if healthy else "degraded",
            "checks": checks,
        }
        return _json(start_response, body, "200 OK" if healthy else "503 Service Unavailable")


def _json(
    start_response: StartResponse, body: dict[str, Any], status: str = "200 OK"
) -> list[bytes]:
    data = json.dumps(body, separators=(",", ":")).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


def _empty(
    start_response: StartResponse, status: str, headers: list[tuple[str, str]]
) -> list[bytes]:
    start_response(status, [("Content-Length", "0"), *headers])
    return []
