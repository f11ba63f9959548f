"""Property-based fuzzing of the running service from its own OpenAPI spec (Schemathesis).

Every operation in `/docs.json` gets schema-valid requests (positive) and requests that break
the schema (negative). Each answer is checked by Schemathesis (no 5xx, status, content type and
body as documented, valid data accepted, invalid data rejected) and here: a 4xx names the
problem. The admin token is set but unknown to the fuzzer, so `/admin/reload` only ever refuses.
"""

from __future__ import annotations

from collections import Counter

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

EXAMPLES = 150  # per generation mode, spread over the operations
# A schema-valid body can still be over the body limit, which no schema can say: 413 it is.
CONFIG = SchemathesisConfig.from_str(
    """
    [checks.positive_data_acceptance]
    expected-statuses = ["2xx", "401", "403", "404", "413"]
    """
)
TALLY: Counter[tuple[str, str, int]] = Counter()  # (mode, operation, status) -> requests
# What negative fuzzing can break (the other operations take no input at all).
WITH_INPUT = {
    "POST /recommend",
    "POST /recommend_batch",
    "GET /similar",
    "GET /games",
    "POST /admin/reload",
}
# Errors about the body as a whole, which has no narrower location to name.
WHOLE_BODY = {"json_invalid", "model_type", "model_attributes_type", "dict_type"}


@pytest.fixture(scope="module")
def api(served: str) -> str:
    """The shared server; its admin token is set, and unknown to the fuzzer."""
    return served


def names_the_problem(body: object) -> bool:
    """A 4xx body says what is wrong: a message, or validation errors each with its location."""
    if not isinstance(body, dict):
        return False
    detail = body.get("detail")
    if isinstance(detail, list):
        return bool(detail) and all(
            e.get("msg") and (e.get("loc") or e.get("type") in WHOLE_BODY) for e in detail
        )
    message = body.get("error") or detail
    return isinstance(message, str) and len(message) >= 10


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_fuzz_every_operation(api: str, mode: GenerationMode):
    schema = schemathesis.openapi.from_url(f"{api}/docs.json", config=CONFIG)
    session = requests.Session()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=schema.as_strategy(generation_mode=mode))
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call_and_validate(base_url=api, session=session, timeout=60)
        TALLY[mode.value, case.operation.label, response.status_code] += 1
        assert response.status_code < 500, response.text[:500]
        if response.status_code >= 400:
            assert names_the_problem(response.json()), response.text[:500]

    fuzz()
    sent = {op for m, op, _ in TALLY if m == mode.value}
    every = {op.ok().label for op in schema.get_all_operations()}
    assert sent >= (every if mode is GenerationMode.POSITIVE else WITH_INPUT), "one was not fuzzed"
    assert requests.get(f"{api}/readyz", timeout=30).status_code == 200
    print(f"\n{mode.value} requests: {sum(n for key, n in TALLY.items() if key[0] == mode.value)}")
    for (m, operation, status), n in sorted(TALLY.items()):
        if m == mode.value:
            print(f"  {operation:24} {status}: {n}")
