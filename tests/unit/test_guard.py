"""The request guard and admin auth, on a bare Starlette app (no model, no server)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serving.guard import Admission, RequestGuard, admin_refusal, duplicate_key

MAX_BYTES = 2048
TOKEN = "s3cret-token"
JSON = {"content-type": "application/json"}


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"received": len(await request.body())})


def guard(app: Starlette, admin_token: str = TOKEN, body_timeout_s: float = 5.0) -> RequestGuard:
    return RequestGuard(
        app, max_bytes=MAX_BYTES, admin_token=admin_token, body_timeout_s=body_timeout_s
    )


def guarded(admin_token: str = TOKEN) -> TestClient:
    app = Starlette(
        routes=[
            Route("/echo", echo, methods=["GET", "POST"]),
            Route("/admin/reload", echo, methods=["POST"]),
        ]
    )
    return TestClient(guard(app, admin_token))


def test_a_json_body_within_the_limit_reaches_the_endpoint_whole():
    body = b'{"a": "' + b"x" * 1000 + b'"}'
    response = guarded().post("/echo", content=body, headers=JSON)
    assert response.status_code == 200
    assert response.json() == {"received": len(body)}


def test_a_declared_length_over_the_limit_is_413_unread():
    response = guarded().post("/echo", content=b"{}", headers={**JSON, "content-length": "9999"})
    assert response.status_code == 413
    assert str(MAX_BYTES) in response.json()["error"]


def test_a_chunked_body_over_the_limit_is_413():
    def chunks():
        for _ in range(10):
            yield b" " * 500

    response = guarded().post("/echo", content=chunks(), headers=JSON)
    assert response.status_code == 413


def test_a_body_that_is_not_json_is_415():
    response = guarded().post("/echo", content=b"a=1", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]


def test_a_repeated_key_is_400_naming_it():
    response = guarded().post("/echo", content=b'{"top_k": 1, "top_k": 99}', headers=JSON)
    assert response.status_code == 400
    assert "'top_k'" in response.json()["error"]
    assert duplicate_key(b'{"a": {"b": 1, "b": 2}}') == "b"
    assert duplicate_key(b'{"a": 1, "b": {"a": 2}}') is None  # one key per object
    assert duplicate_key(b"{not json") is None  # the endpoint's own parser names that


def test_admin_endpoint_is_off_without_a_token():
    client = guarded(admin_token="")
    for headers, body in [
        ({}, b""),
        ({"authorization": "Basic Z3Vlc3M6Z3Vlc3M="}, b'{"tag": "gamerec:latest"}'),
        ({"authorization": "Bearer guess"}, b"{not json"),  # refused before the body is read
    ]:
        response = client.post("/admin/reload", headers={**JSON, **headers}, content=body)
        assert response.status_code == 403, response.text
        assert "GAMEREC_ADMIN_TOKEN" in response.json()["error"]


@pytest.mark.parametrize(
    "authorization", ["", "Bearer", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x"]
)
def test_a_missing_or_wrong_token_is_401_with_a_challenge(authorization: str):
    response = guarded().post(
        "/admin/reload", headers={**JSON, "authorization": authorization}, content=b"{}"
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_the_right_token_passes():
    response = guarded().post(
        "/admin/reload", headers={**JSON, "authorization": f"bearer {TOKEN}"}, content=b"{}"
    )
    assert response.status_code == 200
    assert admin_refusal(f"Bearer {TOKEN}", TOKEN) is None


async def _trickle(first: bytes, then_wait_s: float) -> AsyncIterator[bytes]:
    yield first
    await asyncio.sleep(then_wait_s)
    yield b"}"


def test_a_body_that_does_not_arrive_in_time_is_408():
    async def scenario() -> None:
        app = guard(Starlette(routes=[Route("/echo", echo, methods=["POST"])]), body_timeout_s=0.3)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x")
        slow = asyncio.create_task(
            client.post("/echo", content=_trickle(b'{"a": 1', 30), headers=JSON)
        )
        await asyncio.sleep(0.1)
        started = time.monotonic()
        late = await slow
        assert 0.1 < time.monotonic() - started < 1.0
        assert late.status_code == 408
        assert late.headers["connection"] == "close"
        assert "0.3 s" in late.json()["error"]

    asyncio.run(scenario())


def test_admission_limits_the_entry_routes_only():
    """Probes, metrics, admin requests and the Embedder's routes are neither counted nor
    refused (the worker's protocol applies the limit: tests/unit/test_bentoml_fixes.py)."""
    admission = Admission(max_in_flight=1, retry_after_s=1, inner_routes=("/top_k", "/load"))
    assert admission.limits("/recommend") and admission.limits("/recommend_batch")
    unlimited = ("/top_k", "/load", "/readyz", "/livez", "/metrics", "/admin/reload")
    assert not any(admission.limits(path) for path in unlimited)
    admission.in_flight = 1  # the worker is full
    assert not admission.admits("/recommend") and admission.refused == 1
    assert all(admission.admits(path) for path in unlimited) and admission.refused == 1
