"""schemathesis fuzzes genlab serve's OpenAPI spec: every generated request, valid or not, gets an answer below 500."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

from genlab.serving import ServeConfig, serve_app

FUZZ_EXAMPLES = 40  # per operation: a few hundred requests over the spec in CI; the bench runs thousands


KEY = {"Authorization": "Bearer fuzz-key"}


def fuzz(app, examples: int) -> dict[str, int]:
    """Requests schemathesis generated per operation, with the server's key; AssertionError on the first answer of
    500 or more."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=KEY)
    counts: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        name = f"{operation.method.upper()} {operation.path}"
        counts[name] = fuzz_operation(operation, name, examples)
    return counts


def fuzz_operation(operation, name: str, examples: int) -> int:
    calls = [0]

    @given(case=operation.as_strategy())
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case) -> None:
        response = case.call(headers=KEY)
        calls[0] += 1
        assert response.status_code < 500, f"{name} {case.body!r} -> {response.status_code} {response.text[:300]}"

    check()
    return calls[0]


def test_no_fuzzed_request_gets_a_server_error(runs):
    limits = {"max_n": 2, "max_steps": 10, "max_prompt_chars": 2000}  # 10: the tiny run's own steps
    app = serve_app([runs["lm"].path, runs["digits"].path], ServeConfig(names=["lm", "digits"], limits=limits,
                                                                        api_keys=["fuzz-key"], engine="thread"))
    counts = fuzz(app, FUZZ_EXAMPLES)
    assert len(counts) >= 12 and sum(counts.values()) >= 300, counts
