"""The REST surface fuzzed from its own contract: Schemathesis generates requests from the OpenAPI
document the gateway serves (/api/v1/openapi.json) and sends them through the real Envoy.

Every generated request, valid or not (Schemathesis' positive and negative modes), must get an
answer that is not a 5xx, whose status and body the document allows, and every 4xx must be JSON
naming the problem ({"code", "message"} with a non-empty message). Then the same requests, sent to a
stack with AUTH_MODE=jwt without a token or with a wrong one (garbage, signed by a stranger's key,
expired), must all be refused with 401 (403 allowed) before reaching a service. The stack is a stack of its own:
the fuzzer ingests, creates and deletes dashboards, and trains online models, which must not meet
the other modules' data. Runs are bounded and reproducible (deterministic generation, a fixed number
of examples per operation, no example database).

Left out, and why:
- GET /api/v1/streams/{stream_type}/{stream_id}: a server stream that lasts as long as its client
  wants (tests/e2e/test_streams.py covers it); a fuzzer's request would never end.
- POST /api/v1/ml/predict-maintenance/train: training takes minutes by design (its own route
  timeout; tests/e2e/test_maintenance.py covers it).
"""

from __future__ import annotations

import json
import shutil
import time

import jwt
import pytest
import schemathesis
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from gateway.console import OPENAPI_DOCUMENT
from libs.auth_keys import ensure_dev_keys, key_id, load_private_key, mint_token
from tests.e2e.conftest import own_stack, stack_env

EXCLUDED = [
    ("GET", "/api/v1/streams/{stream_type}/{stream_id}"),
    ("POST", "/api/v1/ml/predict-maintenance/train"),
]
EXAMPLES_PER_OPERATION = 20
# Refusals happen at Envoy, before any service: fewer examples, each sent with four credentials.
AUTH_EXAMPLES_PER_OPERATION = 10


def error_names_the_problem(ctx: schemathesis.CheckContext, response: schemathesis.Response, case) -> None:
    """A 4xx answers JSON with the status `code` and a non-empty `message` saying what is wrong."""
    if not 400 <= response.status_code < 500:
        return
    try:
        body = json.loads(response.content)
    except ValueError as error:
        raise AssertionError(
            f"a {response.status_code} answered a body that is not JSON: {response.content[:200]!r}"
        ) from error
    assert isinstance(body, dict), f"a {response.status_code} answered {body!r}, not an object"
    assert "code" in body, f"a {response.status_code} answered no `code`: {body!r}"
    message = body.get("message")
    assert isinstance(message, str) and message.strip(), (
        f"a {response.status_code} answered no message: {body!r}"
    )


CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, error_names_the_problem]


def refused_without_credentials(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case
) -> None:
    """Without valid credentials every request is refused: 401 (or 403), never served nor a 5xx.
    A method the operation does not have may instead meet Envoy's own refusals first (a QUERY
    without Content-Type is a 400, an unrouted method a 404), which serve nothing either."""
    status = response.status_code
    if case.method.upper() != case.operation.method.upper():
        assert 400 <= status < 500, f"{case.method} without valid credentials answered {status}"
        return
    assert status in (401, 403), f"{case.method} {case.path} without valid credentials answered {status}"


def stranger_token() -> str:
    """A well-formed RS256 token with every claim right, signed by a key the gateway does not know."""
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {"tenant": "default", "scope": "read write admin", "exp": int(time.time()) + 600}
    return jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": key_id(stranger.public_key())})


def fresh_data_dir(tmp_path_factory, mlflow_template, name: str):
    data_dir = tmp_path_factory.mktemp(name)
    (data_dir / "mlflow").mkdir()
    shutil.copyfile(mlflow_template, data_dir / "mlflow" / "mlflow.db")
    return data_dir


@pytest.fixture(scope="module")
def fuzzed_stack(tmp_path_factory, mlflow_template):
    data_dir = fresh_data_dir(tmp_path_factory, mlflow_template, "fuzz")
    with own_stack(stack_env(data_dir, DEMO="0", MAX_REQUEST_BYTES="1048576")) as started:
        yield started


@pytest.fixture(scope="module")
def jwt_stack(tmp_path_factory, mlflow_template):
    """A stack with AUTH_MODE=jwt trusting the development key pair, and the wrong credentials to
    try on it: none, garbage, a stranger's signature, and an expired token of the right key."""
    data_dir = fresh_data_dir(tmp_path_factory, mlflow_template, "fuzz-jwt")
    key = load_private_key(ensure_dev_keys(data_dir).private_key)
    expired = mint_token(key, tenant="default", scopes="read write admin", ttl_seconds=-120)
    credentials = {
        "no token": {},
        "garbage": {"Authorization": "Bearer not-a-token"},
        "stranger's key": {"Authorization": f"Bearer {stranger_token()}"},
        "expired": {"Authorization": f"Bearer {expired}"},
    }
    with own_stack(stack_env(data_dir, DEMO="0", AUTH_MODE="jwt")) as started:
        yield started, credentials


# The checked-in document, which is the one the gateway serves (tests/e2e/test_openapi.py); loaded
# at collection, so each operation is a test of its own. (Schemathesis' lazy `from_fixture` loading
# does not run under pytest 9.)
schema = schemathesis.openapi.from_path(OPENAPI_DOCUMENT).exclude(
    func=lambda ctx: (ctx.operation.method.upper(), ctx.operation.path) in EXCLUDED
)
schema.config.generation.update(max_examples=EXAMPLES_PER_OPERATION, deterministic=True)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_breaks_the_gateway(case, fuzzed_stack):
    case.call_and_validate(base_url=fuzzed_stack.base, checks=CHECKS, timeout=30)


@schema.parametrize()
@settings(
    max_examples=AUTH_EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_without_valid_credentials_everything_is_refused(case, jwt_stack):
    stack, credentials = jwt_stack
    for headers in credentials.values():
        case.call_and_validate(
            base_url=stack.base,
            headers=headers,
            checks=[refused_without_credentials, error_names_the_problem],
            timeout=30,
        )
