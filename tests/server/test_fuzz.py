"""The API fuzzed from its own OpenAPI document (schemathesis) against ``messagestore serve`` in
a subprocess: no 500, no hang, every answer as documented (status, content type, body schema,
the error shape). A short run by default (25 examples per operation, derandomized);
``-m soak`` runs 400 random ones per operation.

The streaming routes (``/api/events``, ``.../ui-stream``, ``/api/chat`` and its ``/stream``)
end only when what they follow ends (here nothing runs turns), so they are left to their own
tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.support.server_helpers import ServerProcess

EXAMPLES = 25
SOAK_EXAMPLES = 400


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    path: Path = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    with ServerProcess(f"sqlite+aiosqlite:///{path}") as process:
        yield process


OPERATIONS = [
    ("GET", "/api/sessions"),
    ("POST", "/api/sessions"),
    ("GET", "/api/sessions/{session_id}"),
    ("DELETE", "/api/sessions/{session_id}"),
    ("GET", "/api/sessions/{session_id}/messages"),
    ("POST", "/api/sessions/{session_id}/inputs"),
    ("POST", "/api/sessions/{session_id}/stop"),
    ("GET", "/api/messages/{message_id}"),
    ("GET", "/"),
    ("GET", "/static/{name}"),
]


@pytest.fixture(scope="module")
def api_schema(server: ServerProcess) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def test_every_fuzzed_operation_is_in_the_document(api_schema: schemathesis.BaseSchema) -> None:
    documented = set()
    for result in api_schema.get_all_operations():
        operation = result.ok()
        documented.add((operation.method.upper(), operation.path))
    streaming = {
        ("GET", "/api/events"),
        ("GET", "/api/messages/{message_id}/ui-stream"),
        ("POST", "/api/chat"),
        ("GET", "/api/chat/{session_id}/stream"),
    }
    assert documented == set(OPERATIONS) | streaming


def fuzz(api_schema: schemathesis.BaseSchema, method: str, path: str, examples: int) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=examples == EXAMPLES,
        database=None,
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(timeout=10)
        assert response.status_code < 500
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error"}
            assert body["error"]["status"] == response.status_code

    run()


IDS = [f"{m} {p}" for m, p in OPERATIONS]


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=IDS)
def test_api_answers_as_documented(
    api_schema: schemathesis.BaseSchema, method: str, path: str
) -> None:
    fuzz(api_schema, method, path, EXAMPLES)


@pytest.mark.soak
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=IDS)
def test_api_answers_as_documented_soak(
    api_schema: schemathesis.BaseSchema, method: str, path: str
) -> None:
    fuzz(api_schema, method, path, SOAK_EXAMPLES)
