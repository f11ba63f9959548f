"""Hostile input: hand-written attacks on the running service, then broken or poisoned models.

The API cases run against one real `bentoml serve` (no admin token set, so admin endpoints are
off); the last test checks that the service still answers as it did before all of them.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from serving.settings import load_service_settings

LIMITS = load_service_settings().limits
VALID = {"user_id": "u_1", "time_played": {"g_1": 120.0, "g_2": 30.0}, "top_k": 5}
JSON = {"content-type": "application/json"}


def _nested(depth: int) -> bytes:
    return b'{"user_id": "u", "time_played": ' + b"[" * depth + b"]" * depth + b"}"


def _compact(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


# 100,000 distinct game ids, as compactly as JSON allows: under the body limit, over the history.
MANY_GAMES = {np.base_repr(i, 36): 0 for i in range(100_000)}
THIRTY_MB = b'{"user_id": "' + b"x" * 30_000_000 + b'"}'


def _chunks(data: bytes, size: int = 1 << 16):
    for start in range(0, len(data), size):
        yield data[start : start + size]


# (id, request keyword arguments for httpx, expected status, words the answer must contain)
CASES = [
    (
        "nan",
        {"content": b'{"user_id": "u", "time_played": {"g_1": NaN}}'},
        400,
        ["time_played", "finite"],
    ),
    (
        "infinity",
        {"content": b'{"user_id": "u", "time_played": {"g_1": Infinity}}'},
        400,
        ["time_played", "finite"],
    ),
    ("minus-infinity-top-k", {"content": b'{"user_id": "u", "top_k": -Infinity}'}, 400, ["top_k"]),
    (
        "overflowing-float",
        {"content": b'{"user_id": "u", "time_played": {"g_1": 1e400}}'},
        400,
        ["time_played", "finite"],
    ),
    (
        "minutes-over-limit",
        {"json": {"user_id": "u", "time_played": {"g_1": 2e8}}},
        400,
        ["time_played", "less than or equal"],
    ),
    (
        "number-as-string",
        {"json": {"user_id": "u", "time_played": {"g_1": "120"}}},
        400,
        ["time_played", "valid number"],
    ),
    ("top-k-as-string", {"json": {"user_id": "u", "top_k": "5"}}, 400, ["top_k", "integer"]),
    (
        "count-as-string",
        {"json": {"user_id": "u", "achievements": {"g_1": "3"}}},
        400,
        ["achievements", "integer"],
    ),
    ("fractional-top-k", {"json": {"user_id": "u", "top_k": 2.5}}, 400, ["top_k", "integer"]),
    (
        "huge-top-k",
        {"json": {"user_id": "u", "top_k": 10**30}},
        400,
        ["top_k", "less than or equal"],
    ),
    (
        "huge-count",
        {"content": b'{"user_id": "u", "achievements": {"g_1": 1' + b"0" * 400 + b"}}"},
        400,
        ["achievements", "less than or equal"],
    ),
    (
        "100k-games-compact",
        {"content": _compact({"user_id": "u", "time_played": MANY_GAMES})},
        400,
        ["time_played", f"at most {LIMITS.max_history}"],
    ),
    (
        "100k-games-413",
        {"json": {"user_id": "u", "time_played": {f"game-{i}": 1.0 for i in range(100_000)}}},
        413,
        [f"limit of {LIMITS.max_body_bytes} bytes"],
    ),
    ("long-user-id", {"json": {"user_id": "u" * 100_000}}, 400, ["user_id", "at most"]),
    (
        "long-game-id",
        {"json": {"user_id": "u", "time_played": {"g" * 10_000: 1.0}}},
        400,
        ["time_played", "at most"],
    ),
    (
        "long-genre",
        {"json": {"user_id": "u", "genres": ["rpg" * 1000]}},
        400,
        ["genres", "at most"],
    ),
    ("non-utf8", {"content": b'{"user_id": "\xff\xfe\xc3\x28"}'}, 400, ["unicode"]),
    ("lone-surrogate", {"content": b'{"user_id": "\\ud800"}'}, 400, ["Invalid JSON", "escape"]),
    ("deep-array", {"content": _nested(100_000)}, 400, ["recursion limit"]),
    (
        "deep-object",
        {"content": b'{"user_id": "u", "x": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}"},
        400,
        ["recursion limit"],
    ),
    ("30-mb", {"content": THIRTY_MB}, 413, [f"limit of {LIMITS.max_body_bytes} bytes"]),
    (
        "30-mb-chunked",
        {"content": _chunks(THIRTY_MB)},
        413,
        [f"limit of {LIMITS.max_body_bytes} bytes"],
    ),
    ("empty-body", {"content": b""}, 400, ["user_id", "Field required"]),
    ("json-null", {"content": b"null"}, 400, ["object"]),
    ("top-level-array", {"content": b"[1, 2]"}, 400, ["object"]),
    ("truncated-json", {"content": b'{"user_id": "u", '}, 400, ["Invalid JSON"]),
    (
        "text-plain",
        {"content": _compact(VALID), "headers": {"content-type": "text/plain"}},
        415,
        ["application/json", "text/plain"],
    ),
    (
        "form-encoded",
        {"data": {"user_id": "u"}, "headers": {}},
        415,
        ["application/json", "x-www-form-urlencoded"],
    ),
    (
        "no-content-type",
        {"content": _compact(VALID), "headers": {}},
        415,
        ["application/json", "none"],
    ),
    (
        "duplicate-key",
        {"content": b'{"user_id": "a", "user_id": "b"}'},
        400,
        ["duplicate key", "user_id"],
    ),
    (
        "duplicate-nested-key",
        {"content": b'{"user_id": "a", "time_played": {"g_1": 1, "g_1": 9}}'},
        400,
        ["duplicate key", "g_1"],
    ),
    ("unknown-field", {"json": {**VALID, "is_admin": True}}, 400, ["is_admin", "Extra inputs"]),
]


def _send(client: httpx.Client, path: str, request: dict) -> httpx.Response:
    request = {"headers": JSON, **request}
    return client.post(path, **request)


@pytest.fixture(scope="module")
def api(served: str):
    """The shared server, and its answer to a valid request before the hostile ones."""
    client = httpx.Client(base_url=served, timeout=60)
    before = client.post("/recommend", json=VALID)
    assert before.status_code == 200, before.text
    return client, before.json()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("request_", "status", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_hostile_recommend_gets_a_4xx_naming_the_problem(api, request_, status, words):
    client, _ = api
    response = _send(client, "/recommend", request_)
    assert response.status_code == status, response.text[:500]
    for word in words:
        assert word in response.text, (word, response.text[:500])


@pytest.mark.slow
def test_hostile_batches(api):
    client, _ = api
    too_many = client.post("/recommend_batch", json={"requests": [VALID] * 101})
    assert too_many.status_code == 400 and "requests" in too_many.text
    one_bad = client.post("/recommend_batch", json={"requests": [VALID, {**VALID, "top_k": "5"}]})
    assert one_bad.status_code == 400
    assert one_bad.json()["detail"][0]["loc"] == ["requests", 1, "top_k"]
    deep = _send(
        client,
        "/recommend_batch",
        {"content": b'{"requests": ' + b"[" * 99_999 + b"]" * 99_999 + b"}"},
    )
    assert deep.status_code == 400 and "recursion limit" in deep.text


@pytest.mark.slow
def test_hostile_query_parameters(api):
    client, _ = api
    long_id = client.get("/similar", params={"game_id": "g" * 10_000})
    assert long_id.status_code == 422 and "game_id" in long_id.text
    huge_k = client.get("/similar", params={"game_id": "g_1", "top_k": "9" * 400})
    assert huge_k.status_code == 422 and "top_k" in huge_k.text
    nan_k = client.get("/similar", params={"game_id": "g_1", "top_k": "NaN"})
    assert nan_k.status_code == 422 and "top_k" in nan_k.text
    huge_offset = client.get("/games", params={"query": "a", "offset": "9" * 30})
    assert huge_offset.status_code == 200 and huge_offset.json()["games"] == []
    assert client.get("/games", params={"query": "\x00\xff"}).status_code == 200


@pytest.mark.slow
def test_admin_endpoint_refuses_a_missing_or_wrong_token(api, trained):
    """The token is checked before the body is read (with no token set at all the endpoint is
    off: tests/unit/test_guard.py)."""
    client, _ = api
    for headers, body in [
        ({}, b""),
        ({"authorization": "Basic Z3Vlc3M6Z3Vlc3M="}, b'{"tag": "gamerec:latest"}'),
        ({"authorization": "Bearer guess"}, b"{not json"),  # refused before the body is read
    ]:
        response = client.post("/admin/reload", headers={**JSON, **headers}, content=body)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/info").json()["model"] == trained.tag


@pytest.mark.slow
def test_service_still_answers_as_before(api):
    """Runs last in this module: after every hostile case, the same answer to a valid request."""
    client, before = api
    assert client.get("/readyz").status_code == 200
    after = client.post("/recommend", json=VALID)
    assert after.status_code == 200 and after.json() == before
