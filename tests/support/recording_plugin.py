"""An Orthanc request filter that writes down how Orthanc read each request, then refuses it.

Loaded by orthanc-python in place of infra/orthanc/plugin.py (tests/support/orthanc.py,
`RecordingOrthanc`). One JSON line per request: the method Orthanc is about to run
(after any override it honours), the path as its filter sees it, the headers and the
GET arguments. Only Orthanc Explorer's page is let through (the readiness probe);
every other request gets 403, so nothing a test sends is run.
"""

import json

import orthanc

_METHODS = {
    orthanc.HttpMethod.GET: "GET",
    orthanc.HttpMethod.POST: "POST",
    orthanc.HttpMethod.PUT: "PUT",
    orthanc.HttpMethod.DELETE: "DELETE",
}
_FILE = json.loads(orthanc.GetConfiguration())["Recorder"]["File"]


def record(uri, **request):
    method = _METHODS.get(request.get("method"), "?")
    line = {
        "method": method,
        "uri": uri,
        "headers": request.get("headers") or {},
        "get": request.get("get") or {},
    }
    with open(_FILE, "a", encoding="utf-8") as output:
        output.write(json.dumps(line) + "\n")
    return method == "GET" and uri == "/app/explorer.html"


orthanc.RegisterIncomingHttpRequestFilter(record)
