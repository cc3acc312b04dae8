"""Orthanc-side authorization: every request to Orthanc's HTTP port asks the policy webhook.

Loaded by orthanc-python (Debian's system Python 3.11, standard library
only). For each incoming request the filter finds the token (GET argument
`token` on GET requests, header `token`, `Authorization: Bearer`), maps the
URI to a level and identifiers the way the official Authorization plugin does,
and POSTs its JSON (docs/PROTOCOLS.md) to the policy service's webhook, adding
`uri`, `origin` and `ip` so the service judges the exact path. A grant is
cached for its `validity` (never past the token's `exp`); a slow, absent or
nonsensical webhook is a deny. Static Orthanc Explorer files pass unchecked.

Configuration, section "ZhivaAuthorization" of Orthanc's JSON:
  WebhookUrl      http://127.0.0.1:PORT/webhook (required: without it, every
                  checked request is denied)
  TimeoutSeconds  webhook timeout, default 2
  MaxValidity     upper bound on a cached grant in seconds, default 2
  CacheEntries    cached answers kept, default 20000
  PythonPath      the project directory, where the package `services.access`
                  (standard library only) is imported from; default two levels
                  above this file

Without that package the plugin denies every request and says so in
Orthanc's log.

Requests nginx already decided (auth_request) carry `X-Zhiva-Decided`, an
HMAC (key from `.env`'s SECRET_KEY, services/access/handoff.py) of
the decided method, path and token. A request passes on it only when it binds
the method Orthanc runs, the path as Orthanc read it and the token found here;
anything else (a method override, a path Orthanc reads differently, another
token) is judged here. A method override is refused outright. Without
CONFIG_DIR/SECRET_KEY nothing is taken on nginx's word.

Two caches, both bounded by `validity` and the token's `exp`: answers by
(token, origin, method, uri, query), and, when the webhook names the token's
`role`, the role by (token, origin):
then the token's next requests are judged here with the service's own table
(one webhook call per token every few seconds, not one per new URI). A
request the cached role does not allow still goes to the webhook.

Each Orthanc HTTP thread keeps its Python thread state between requests
(`ThreadStates`): orthanc-python enters Python with PyGILState_Ensure and
leaves with PyGILState_Release, which would create and destroy a thread state
on every request, an mmap and a munmap each, in a process of some 60 threads
(what that costs: docs/BENCHMARKS.md).
"""

from __future__ import annotations

import base64
import http.client
import importlib
import json
import os
import re
import sys
import threading
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

import orthanc

_HERE = os.path.dirname(os.path.abspath(__file__))
_PROJECT_DIR = os.path.dirname(os.path.dirname(_HERE))
# Added to Orthanc Explorer: sends the `?token=` of the page with every request.
EXPLORER_JS = os.path.join(_HERE, "explorer.js")

_METHODS = {
    orthanc.HttpMethod.GET: "get",
    orthanc.HttpMethod.POST: "post",
    orthanc.HttpMethod.PUT: "put",
    orthanc.HttpMethod.DELETE: "delete",
}
# Static Explorer files: plain names only, so no spelling of another route passes.
_STATIC = re.compile(r"^/app/[A-Za-z0-9_-][A-Za-z0-9._/-]*$")
_STATIC_EXACT = frozenset({"/plugins/explorer.js", "/app/explorer.html"})
_ORTHANC_RESOURCE = re.compile(r"^/(patients|studies|series|instances)/([0-9a-fA-F-]+)(?:/|$)")
_LEVEL_OF = {"patients": "patient", "studies": "study", "series": "series", "instances": "instance"}
_QIDO_UIDS = (  # (level, GET arguments that name it), most specific first
    ("instance", ("SOPInstanceUID", "00080018")),
    ("series", ("SeriesInstanceUID", "0020000E", "0020000e")),
    ("study", ("StudyInstanceUID", "0020000D", "0020000d")),
)


def _log(message: str) -> None:
    orthanc.LogWarning("ZhivaAuthorization: " + message)


class SharedRules:
    """The policy service's permission table and handoff rule: the package it runs itself.

    Imported from the project directory (Orthanc's Python is not the project's
    virtualenv; the package needs nothing but the standard library). Without it
    the plugin cannot tell what a request needs nor check nginx's word: `_install`
    then denies every request, saying so in Orthanc's log.
    """

    def __init__(self, python_path: str) -> None:
        if python_path not in sys.path:
            sys.path.insert(0, python_path)
        self.permissions = importlib.import_module("services.access.permissions")
        self.handoff = importlib.import_module("services.access.handoff")
        self.permissions.required_role("GET", "/system")  # fails here, not on a request
        secret = self.handoff.secret_key_from(os.environ.get("CONFIG_DIR"))
        # Without SECRET_KEY nothing is taken on nginx's word: every request is judged here.
        self.handoff_key = self.handoff.handoff_key(secret) if secret else None

    def decided_by_nginx(self, method: str, uri: str, token: str | None, value: str) -> bool:
        """Whether nginx's value binds exactly this method, Orthanc path and token."""
        if self.handoff_key is None:
            return False
        method = method.upper()
        scope = self.permissions.handoff_scope(method, uri)
        return self.handoff.matches(
            value, self.handoff.bound_value(self.handoff_key, method, scope, token)
        )


class Settings:
    def __init__(self, configuration: dict) -> None:
        section = configuration.get("ZhivaAuthorization") or {}
        self.url = section.get("WebhookUrl") or ""
        self.timeout = float(section.get("TimeoutSeconds", 2))
        self.max_validity = float(section.get("MaxValidity", 2))
        self.cache_entries = int(section.get("CacheEntries", 20000))
        self.rules = SharedRules(section.get("PythonPath") or _PROJECT_DIR)
        self.permissions = self.rules.permissions
        root = ((configuration.get("DicomWeb") or {}).get("Root") or "/dicom-web/").rstrip("/")
        self.dicomweb = re.compile(
            "^" + re.escape(root) + r"/studies(?:/([^/]+)(?:/series(?:/([^/]+)"
            r"(?:/instances(?:/([^/]+))?)?)?)?)?(?:/|$)"
        )
        self.qido = re.compile("^" + re.escape(root) + r"/(studies|series|instances)/?$")
        parts = urlsplit(self.url)
        self.host = parts.hostname or ""
        self.port = parts.port or 80
        self.path = parts.path or "/"
        if parts.scheme != "http" or not self.host:
            _log(f"WebhookUrl {self.url!r} is not an http:// URL: every request will be denied")
            self.host = ""


class Webhook:
    """One keep-alive connection per Orthanc HTTP thread; any failure is a deny."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(
                self.settings.host, self.settings.port, timeout=self.settings.timeout
            )
            self._local.connection = connection
        return connection

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            connection.close()

    def ask(self, body: dict) -> tuple[bool, float, str | None]:
        """(granted, validity, role); a deny unless the answer is exactly the webhook's shape."""
        denied = (False, 0.0, None)
        if not self.settings.host:
            return denied
        payload = json.dumps(body).encode()
        deadline = time.monotonic() + self.settings.timeout
        for attempt in (1, 2):
            try:
                connection = self._connection()
                connection.request(
                    "POST", self.settings.path, payload, {"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                raw = response.read(65536)
                if response.will_close:
                    self._drop()
                break
            except (OSError, http.client.HTTPException) as error:
                self._drop()
                # A kept-alive connection the server closed meanwhile: one fresh try.
                if attempt == 2 or time.monotonic() >= deadline or isinstance(error, TimeoutError):
                    _log(f"webhook unreachable ({error.__class__.__name__}): denying")
                    return denied
        if response.status != 200:
            _log(f"webhook answered HTTP {response.status}: denying")
            return denied
        try:
            answer = json.loads(raw)
        except ValueError:
            _log("webhook answered something that is not JSON: denying")
            return denied
        if not isinstance(answer, dict) or answer.get("granted") is not True:
            return denied
        validity = answer.get("validity")
        if isinstance(validity, bool) or not isinstance(validity, int | float) or validity < 0:
            _log("webhook answered a grant without a valid validity: denying")
            return denied
        role = answer.get("role")
        return True, float(validity), role if role in ("viewer", "editor", "admin") else None


class Cache:
    """Values with deadlines: grants by (token, origin, method, uri, query), roles by
    (token, origin)."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, now: float):
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            if entry[0] <= now:
                del self._data[key]
                return None
            return entry[1]

    def put(self, key: tuple, value, deadline: float) -> None:
        with self._lock:
            self._data[key] = (deadline, value)
            while len(self._data) > self.entries:
                self._data.popitem(last=False)


def token_expiry(token: str) -> float | None:
    """The `exp` claim read without verifying: only ever used to shorten a cache entry."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp")
        return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None
    except (IndexError, ValueError, TypeError, AttributeError):
        return None


def find_token(
    rules: SharedRules, method: str, headers: dict, get: dict
) -> tuple[str | None, str | None]:
    """(token-key, token-value) of the webhook's JSON, or (None, None): the order nginx's
    check reads them in (handoff.token_of)."""
    header = str(headers.get("token") or "").strip()
    query = str(get.get("token") or "").strip() if method == "get" else ""
    token = rules.handoff.token_of(header, headers.get("authorization"), query)
    if token is None:
        return None, None
    return ("token" if token in (header, query) else "authorization"), token


def resource_of(settings: Settings, uri: str, get: dict) -> dict:
    """Level and identifiers like the official plugin: Orthanc ids, DICOMweb UIDs, QIDO filters."""
    match = _ORTHANC_RESOURCE.match(uri)
    if match:
        return {"level": _LEVEL_OF[match.group(1)], "orthanc-id": match.group(2)}
    match = settings.dicomweb.match(uri)
    if match and match.group(1):
        study, series, instance = match.groups()
        if instance:
            return {"level": "instance", "dicom-uid": instance}
        if series:
            return {"level": "series", "dicom-uid": series}
        return {"level": "study", "dicom-uid": study}
    if settings.qido.match(uri):
        for level, names in _QIDO_UIDS:
            for name in names:
                if get.get(name):
                    return {"level": level, "dicom-uid": str(get[name])}
    return {"level": "system"}


class ThreadStates:
    """Keeps the calling thread's Python thread state alive after orthanc-python's callback.

    orthanc-python calls PyGILState_Ensure before a filter and PyGILState_Release after
    it; on a thread Python did not start, the release deletes the thread state the
    ensure created, so the next request builds a new one (its frame stack is an mmap,
    freed with a munmap). One more PyGILState_Ensure per thread, never released, keeps
    the count above zero: the thread state lives as long as the Orthanc thread. Orthanc's
    HTTP threads live as long as its HTTP server, so this holds HttpThreadsCount thread
    states of a few KB each. If ctypes cannot reach the C API, requests are judged all
    the same, only slower.
    """

    def __init__(self) -> None:
        self._local = threading.local()  # lives in the thread state: set once it is kept
        self._ensure: Any = None
        try:
            import ctypes  # here: a Python without _ctypes still runs the filter

            self._ensure = ctypes.pythonapi.PyGILState_Ensure
            self._ensure.restype = ctypes.c_int
            self._ensure.argtypes = []
        except (ImportError, AttributeError, OSError) as error:
            _log(f"Python's C API not reachable ({error!r}): a thread state per request")

    def keep(self) -> None:
        if self._ensure is not None and not getattr(self._local, "kept", False):
            self._ensure()  # holds the GIL already: only counts one more user of this state
            self._local.kept = True


class Authorizer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.webhook = Webhook(settings)
        self.cache = Cache(settings.cache_entries)
        self.roles = Cache(settings.cache_entries)
        self.thread_states = ThreadStates()

    def __call__(self, uri: str, **request) -> bool:
        try:
            self.thread_states.keep()
            return self.check(uri, request)
        except Exception as error:  # noqa: BLE001 - fail closed; Orthanc answers 403
            _log(f"filter error ({error.__class__.__name__}): denying")
            return False

    def check(self, uri: str, request: dict) -> bool:
        method = _METHODS.get(request.get("method"))
        if method is None:
            return False
        headers = request.get("headers") or {}
        get = request.get("get") or {}
        table = self.settings.permissions
        # Orthanc has already replaced the request line's method by an override's, so what
        # the client asked for is unknown: no client of ours sends one (nginx answers 400).
        if table.METHOD_OVERRIDE_HEADER in headers or any(
            str(name).lower() == table.METHOD_OVERRIDE_ARGUMENT for name in get
        ):
            _log(f"method override refused: {method.upper()} {uri}")
            return False
        if method == "get" and (uri in _STATIC_EXACT or (_STATIC.match(uri) and ".." not in uri)):
            return True
        key_name, token = find_token(self.settings.rules, method, headers, get)
        value = headers.get("x-zhiva-decided")
        # nginx granted exactly this request (auth_request); anything else is judged here.
        if value and self.settings.rules.decided_by_nginx(method, uri, token, value):
            return True
        if not token:
            return False  # every route but the static files needs a token
        origin = headers.get("origin")
        query = tuple(sorted(get.items())) if method == "get" else ()
        key = (token, origin, method, uri, query)
        now = time.time()
        if self.cache.get(key, now):
            return True
        role = self.roles.get((token, origin), now)
        if role is not None and table.required_role(method.upper(), uri) <= role:
            return True
        body = {
            "method": method,
            **resource_of(self.settings, uri, get),
            "uri": uri,
            "token-key": key_name,
            "token-value": token,
        }
        if get and method == "get":
            # As Orthanc parsed them: a share token's QIDO must name its study (the policy's
            # services/access/shares.py), and a repeated name reaches us as Orthanc reads it.
            body["get"] = {str(name): str(value) for name, value in get.items()}
        if origin:
            body["origin"] = origin
        if request.get("ip"):
            body["ip"] = request["ip"]
        granted, validity, role = self.webhook.ask(body)
        if granted:
            deadline = now + min(validity, self.settings.max_validity)
            expiry = token_expiry(token)
            if expiry is not None:
                deadline = min(deadline, expiry)
            if deadline > now:
                self.cache.put(key, True, deadline)
                if role is not None:
                    self.roles.put((token, origin), table.Role[role.upper()], deadline)
        return granted


def _deny_everything(uri: str, **request) -> bool:
    return False


def _install() -> None:
    try:
        settings = Settings(json.loads(orthanc.GetConfiguration()))
    except Exception as error:  # noqa: BLE001 - whatever it is, no request may pass unjudged
        orthanc.LogError(
            f"ZhivaAuthorization: cannot load the policy's rules ({error!r}): denying every request"
        )
        orthanc.RegisterIncomingHttpRequestFilter(_deny_everything)
        return
    orthanc.RegisterIncomingHttpRequestFilter(Authorizer(settings))
    with open(EXPLORER_JS, encoding="utf-8") as script:
        orthanc.ExtendOrthancExplorer(script.read())
    _log(f"requests are checked by {settings.url or 'nobody (denying all)'}")
    if settings.rules.handoff_key is not None:
        _log("requests nginx decided (X-Zhiva-Decided for that method, path and token) pass")


_install()
