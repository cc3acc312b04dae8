"""Protocol fuzzing: schemathesis against the running stack, from the served OpenAPI description.

Every operation of `GET /auth/openapi.json` (services/token_service/openapi.py)
gets generated requests through nginx; every answer must be a documented
status with a documented content type, headers and body shape, and never a
5xx (a 503 is documented only where a store can be down, and nothing is
stopped during this run). Bounded: a fixed number of examples per operation,
a deadline, and a fixed seed (derandomised), so a run is repeatable.
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.token_service.openapi import SPEC

pytestmark = pytest.mark.stack

MAX_EXAMPLES = 25


def not_a_server_error(ctx, response, case):  # type: ignore[no-untyped-def]
    assert response.status_code < 500, f"{response.status_code}: {response.text[:200]}"


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.mark.e2e
def test_the_description_is_served(stack):  # type: ignore[no-untyped-def]
    with stack.http() as http:
        served = http.get(f"{stack.base_url}/auth/openapi.json", timeout=30)
    assert served.status_code == 200
    assert served.json() == SPEC


# The same document as served (checked above), loaded at import so pytest can parametrize.
schema = schemathesis.openapi.from_dict(SPEC)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=10_000,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_matches_the_description(case, stack):  # type: ignore[no-untyped-def]
    # Wrong admin passwords and sign-ins count against 127.0.0.1; forget them before each
    # call, so the fuzzing neither waits on the slow-down nor locks out the other tests.
    redis = stack.redis()
    prefix = stack.settings.redis_key_prefix
    for key in redis.scan_iter(f"{prefix}throttle:*"):
        redis.delete(key)
    with requests.Session() as http:
        http.trust_env = False
        response = case.call(base_url=stack.base_url, session=http, verify=stack.ca_file)
    case.validate_response(response, checks=CHECKS)
