"""BentoML 1.4.40's bugs that serving/bentoml_fixes.py works around: each shown on unpatched
BentoML, then gone with the fix (numbered as in that module). Fast: no `bentoml serve`, no
model; tiny services driven in process.

The tests of unpatched behaviour skip when something in this process already patched BentoML
(importing service.py does); every patch a test applies is undone after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import inspect
import json
import logging
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
import weakref
from collections.abc import AsyncIterator
from types import SimpleNamespace

import aiohttp
import bentoml
import pytest
import uvicorn
import uvloop
from _bentoml_impl.client.proxy2 import RemoteProxy, SessionManager
from _bentoml_impl.serde import JSONSerde
from _bentoml_impl.server.app import ServiceAppFactory
from _bentoml_sdk.io_models import IterableResponse
from _bentoml_sdk.method import APIMethod
from _bentoml_sdk.service.factory import Service
from bentoml._internal.bento.bento import BentoModelInfo
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.models import ModelStore
from bentoml._internal.server.http import traffic
from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
from bentoml._internal.service.openapi.utils import exception_components_schema
from bentoml.exceptions import NotFound
from opentelemetry import trace
from opentelemetry.instrumentation import asgi as otel_asgi
from opentelemetry.util.http import ExcludeList
from pydantic import BaseModel
from simple_di import sentinel
from starlette.responses import Response
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving import bentoml_fixes as fixes
from serving.balance import CONNECTIONS, ConnectionShare, WorkerCounts
from serving.guard import Admission
from serving.settings import ConnectionsConfig

# BentoML's own code, captured before any test patches it (at collection: no test module
# imports service.py at its top).
ORIGINAL_TIMEOUT_CALL = traffic.TimeoutMiddleware.__call__
ORIGINAL_OPENAPI_SPEC = inspect.getattr_static(Service, "openapi_spec")
ORIGINAL_ERROR_DETAIL = exception_components_schema()["InvalidArgument"].properties["detail"]
ORIGINAL_RESPONSE_HEADERS = ServiceAppFactory._add_response_headers
ORIGINAL_API_ENDPOINT = ServiceAppFactory.api_endpoint
ORIGINAL_OTEL_CALL = otel_asgi.OpenTelemetryMiddleware.__call__
ORIGINAL_ITERABLE_INIT = IterableResponse.__init__
ORIGINAL_ITERABLE_CALL = IterableResponse.__call__
ORIGINAL_METRICS_CALL = RunnerTrafficMetricsMiddleware.__call__
unpatched_timeout = pytest.mark.skipif(
    ORIGINAL_TIMEOUT_CALL.__module__ != traffic.__name__,
    reason="TimeoutMiddleware was already patched in this process (service.py imported?)",
)
unpatched_openapi = pytest.mark.skipif(
    ORIGINAL_OPENAPI_SPEC.fget.__module__ != "_bentoml_sdk.service.factory",
    reason="Service.openapi_spec was already patched in this process (service.py imported?)",
)


@pytest.fixture
def bentoml_as_released(monkeypatch):
    """BentoML's own code for one test, whatever ran before it in this process: an
    integration test imports service.py in-process (tests/integration/test_service.py), which
    applies every global fix for the rest of the process."""
    monkeypatch.setattr(traffic.TimeoutMiddleware, "__call__", ORIGINAL_TIMEOUT_CALL)
    monkeypatch.setattr(Service, "openapi_spec", ORIGINAL_OPENAPI_SPEC)
    properties = exception_components_schema()["InvalidArgument"].properties
    monkeypatch.setitem(properties, "detail", ORIGINAL_ERROR_DETAIL)
    monkeypatch.setattr(APIMethod, "_local_call", fixes._ORIGINAL_LOCAL_CALL)
    monkeypatch.setattr(ServiceAppFactory, "_add_response_headers", ORIGINAL_RESPONSE_HEADERS)
    monkeypatch.setattr(ServiceAppFactory, "api_endpoint", ORIGINAL_API_ENDPOINT)
    monkeypatch.setattr(otel_asgi.OpenTelemetryMiddleware, "__call__", ORIGINAL_OTEL_CALL)
    monkeypatch.setattr(IterableResponse, "__init__", ORIGINAL_ITERABLE_INIT)
    monkeypatch.setattr(IterableResponse, "__call__", ORIGINAL_ITERABLE_CALL)
    monkeypatch.setattr(RunnerTrafficMetricsMiddleware, "__call__", ORIGINAL_METRICS_CALL)


as_released = pytest.mark.usefixtures("bentoml_as_released")


def test_the_service_refuses_another_bentoml_version() -> None:
    assert bentoml.__version__ == fixes.BENTOML_VERSION  # what these tests show bugs of
    fixes.check_bentoml_version(fixes.BENTOML_VERSION)
    with pytest.raises(RuntimeError, match=r"written for bentoml 1\.4\.40, but 1\.5\.0"):
        fixes.check_bentoml_version("1.5.0")


# ------------------------------------------------------------------- tiny probe services


class Query(BaseModel):
    user_id: str
    genre: str | None = None  # JSON Schema 2020-12 / OpenAPI 3.1: {"type": "null"}


class Ranked(BaseModel):
    ids: list[str]


@bentoml.service(name="fixes_probe_spec")
class SpecProbe:
    @bentoml.api
    def rank(self, query: Query) -> list[Ranked]:  # a root-model output (like Embedder.top_k)
        return [Ranked(ids=[query.user_id])]

    @bentoml.api
    def whole(self, query: Query) -> Ranked:  # a BaseModel output
        return Ranked(ids=[query.user_id])

    @bentoml.api
    def missing(self, tag: str) -> str:  # like the Embedder's `load` of an unknown version
        raise NotFound(f"no model {tag}")

    @bentoml.api
    def defaults(self, tag: str = "current") -> str:  # every parameter has a default
        return tag


@bentoml.service(name="fixes_probe_task")
class TaskProbe:
    @bentoml.task
    def job(self, x: int) -> int:
        return x


@bentoml.service(name="fixes_probe_inner", **fixes.inner_service_config("/top_k", "/load"))
class InnerProbe:
    @bentoml.api
    def top_k(self, queries: list[Query]) -> list[Ranked]:
        return [Ranked(ids=[q.user_id]) for q in queries]

    @bentoml.api
    def load(self, tag: str) -> str:
        return tag


@bentoml.service(name="fixes_probe_entry", **fixes.untraced_routes_config("/recommend"))
class EntryProbe:
    inner = bentoml.depends(InnerProbe)

    @bentoml.api
    def recommend(self, query: Query) -> Ranked:
        return Ranked(ids=[query.user_id])


@bentoml.service(name="fixes_probe_plain")
class PlainProbe:  # BentoML's defaults: recycling on, everything traced, logged, measured
    @bentoml.api
    def top_k(self, queries: list[Query]) -> list[Ranked]:
        return []


@bentoml.service(name="fixes_probe_load")
class LoadProbe:  # InnerProbe's /load, with BentoML's default tracing
    @bentoml.api
    def load(self, tag: str) -> str:
        return tag


def _asgi_app(service, *, is_main: bool = True):
    """`service.to_asgi()` as a worker builds it, with the process-wide cache of the tracing
    exclusions emptied first (a SingletonFactory: one worker serves one service, this test
    process builds several)."""
    BentoMLContainer.tracing_excluded_urls._cache = sentinel
    return service.to_asgi(is_main=is_main)


@pytest.fixture
def in_process():
    """A tiny service served in-process (starlette's TestClient: lifespan and all, no socket).
    Metrics collectors it registers are unregistered after, so that services can follow one
    another in this process (a worker only ever registers one service's)."""
    from prometheus_client import REGISTRY
    from starlette.testclient import TestClient

    before = set(REGISTRY._collector_to_names)
    quiet = [logging.getLogger(n) for n in ("bentoml", "bentoml._internal.server.http_app")]
    clients = []

    def forget_new_collectors():
        for collector in set(REGISTRY._collector_to_names) - before:
            REGISTRY.unregister(collector)

    def serve(service, *, is_main: bool = True):
        forget_new_collectors()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # starlette's TestClient-with-httpx deprecation
            client = TestClient(_asgi_app(service, is_main=is_main))
        client.__enter__()
        clients.append(client)
        return client

    for logger in quiet:
        logger.disabled = True  # the 400s log their tracebacks: expected here
    try:
        yield serve
    finally:
        for client in reversed(clients):
            client.__exit__(None, None, None)
        for logger in quiet:
            logger.disabled = False
        forget_new_collectors()


def _middleware(app, cls):
    found = [m for m in app.user_middleware if m.cls is cls]
    return found[0] if found else None


# ================================================== 1. connection recycling (issue 5540)


async def _unix_echo_server(sock_path: str):
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"received": len(await request.read())})

    app = web.Application()
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, sock_path).start()
    return runner


async def _in_flight_request_across_a_recycle(**recycling) -> list:
    """The `bentoml.depends()` client's SessionManager, over a unix socket as between two
    services: request A is streaming its body (as `AsyncClient._build_payload` does) when
    request B is the one that crosses `max_requests`; A's outcome and B's are returned."""
    sock_dir = tempfile.mkdtemp(prefix="fx", dir="/tmp")  # short: AF_UNIX paths <= 107 bytes
    sock = os.path.join(sock_dir, "s.sock")
    runner = await _unix_echo_server(sock)
    manager = SessionManager(url=pathlib.Path(sock).as_uri(), timeout=5, headers={}, **recycling)
    try:
        for _ in range(manager.max_requests if manager.max_requests < 1000 else 3):
            session = await manager.get_session()  # the calls before: fill the pool's quota
            async with session.post("/echo", data=b"warm-up") as resp:
                await resp.read()
        a_is_writing = asyncio.Event()

        async def body():
            yield b"a" * 10
            a_is_writing.set()
            await asyncio.sleep(0.05)
            yield b"a" * 10

        async def request_a():
            session = await manager.get_session()
            async with session.post("/echo", data=body()) as resp:
                return await resp.json()

        async def request_b():
            await a_is_writing.wait()
            session = await manager.get_session()  # over max_requests: recycles the pool
            async with session.post("/echo", data=b"b") as resp:
                return await resp.json()

        return await asyncio.gather(request_a(), request_b(), return_exceptions=True)
    finally:
        await manager.close()
        await runner.cleanup()
        shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.fixture
def quiet_aiohttp_server():
    """The echo server logs the connection the client drops; that is the point, not noise."""
    logger = logging.getLogger("aiohttp.server")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def test_1_recycling_breaks_a_request_in_flight(quiet_aiohttp_server) -> None:
    """BentoML's default (runner_connection max_requests=100): the 101st call closes the pool
    under the request still using it."""
    a, b = asyncio.run(_in_flight_request_across_a_recycle())  # SessionManager's defaults
    assert b == {"received": 1}
    assert isinstance(a, aiohttp.ClientError), f"request in flight survived the recycle: {a!r}"


def test_1_no_recycling_keeps_it(quiet_aiohttp_server) -> None:
    a, b = asyncio.run(_in_flight_request_across_a_recycle(**fixes.NO_RECYCLING))
    assert a == {"received": 20} and b == {"received": 1}


def test_1_no_recycling_reaches_the_callers_client() -> None:
    """`runner_connection` on the *called* service is what the caller's `bentoml.depends()`
    client (RemoteProxy) reads, once the caller's worker has injected its config."""
    EntryProbe.inject_config()  # what EntryProbe.to_asgi() does in the entry worker
    inner = RemoteProxy("http://127.0.0.1:9", service=InnerProbe)
    plain = RemoteProxy("http://127.0.0.1:9", service=PlainProbe)
    try:
        recycling = {
            name: (
                proxy._async._session_manager.max_requests,
                proxy._async._session_manager.max_age,
            )
            for name, proxy in (("inner", inner), ("plain", plain))
        }
        assert recycling["inner"] == (
            fixes.NO_RECYCLING["max_requests"],
            fixes.NO_RECYCLING["max_age"],
        )
        assert fixes.NO_RECYCLING["max_requests"] > 10**9 and fixes.NO_RECYCLING["max_age"] > 10**8
        assert recycling["plain"] == (100, 300.0)  # BentoML's defaults
    finally:
        asyncio.run(inner.close())
        asyncio.run(plain.close())


# ======================================================== 2. TimeoutMiddleware's timer


@pytest.fixture
def patched_timeout_call(monkeypatch):
    """The fixed `__call__`, restored to BentoML's own after the test."""
    monkeypatch.setattr(traffic.TimeoutMiddleware, "__call__", ORIGINAL_TIMEOUT_CALL)
    returned = fixes.patch_timeout_middleware()
    call = returned if callable(returned) else traffic.TimeoutMiddleware.__call__
    assert call is not ORIGINAL_TIMEOUT_CALL
    return call


REQUEST_STATE = contextvars.ContextVar("request_state")


class RequestObject:
    """Stands for what a request has in its context when it reaches TimeoutMiddleware (the
    tracing middleware's span and context sit outside it)."""


async def _ok_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _call(call, app, timeout: float, path: str = "/x") -> list[dict]:
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    await call(
        traffic.TimeoutMiddleware(app, timeout=timeout),
        {"type": "http", "path": path},
        receive,
        send,
    )
    return sent


async def _requests_then_count(call, n: int) -> tuple[int, int]:
    """n requests, one after another, through a 30 s TimeoutMiddleware; then how many request
    objects are still alive, and how many of the loop's timers are still armed."""
    refs = []

    async def one_request():
        state = RequestObject()
        refs.append(weakref.ref(state))
        REQUEST_STATE.set(state)
        sent = await _call(call, _ok_app, timeout=30)
        assert sent[0]["status"] == 200

    for _ in range(n):
        await asyncio.create_task(one_request())  # a task per request, as uvicorn does
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the loop drops cancelled timers at the head of its heap
    gc.collect()
    loop = asyncio.get_running_loop()
    armed = [h for h in getattr(loop, "_scheduled", ()) if not h.cancelled()]
    return sum(ref() is not None for ref in refs), len(armed)


@unpatched_timeout
@as_released
def test_2_every_request_leaves_an_armed_timer_holding_its_context() -> None:
    alive, armed = asyncio.run(_requests_then_count(ORIGINAL_TIMEOUT_CALL, 200))
    assert armed == 200  # one `call_later(30, ...)` per request, none cancelled
    assert alive == 200  # each timer's Handle holds a copy of its request's contextvars


def test_2_patched_middleware_cancels_it(patched_timeout_call) -> None:
    assert asyncio.run(_requests_then_count(patched_timeout_call, 200)) == (0, 0)


def _timeout_call(which: str, request: pytest.FixtureRequest):
    """BentoML's own `TimeoutMiddleware.__call__`, or the patched one."""
    if which == "patched":
        return request.getfixturevalue("patched_timeout_call")
    if ORIGINAL_TIMEOUT_CALL.__module__ != traffic.__name__:
        pytest.skip("TimeoutMiddleware already patched in this process")
    return ORIGINAL_TIMEOUT_CALL


@pytest.mark.parametrize("which", ["original", "patched"])
def test_2_same_under_uvloop(which, request) -> None:
    """uvicorn runs BentoML's workers on uvloop when it is installed (it is): same leak."""
    uvloop = pytest.importorskip("uvloop")
    call = _timeout_call(which, request)
    alive, _ = uvloop.run(_requests_then_count(call, 100))
    assert alive == (100 if which == "original" else 0)


async def _raises_before_responding(scope, receive, send):
    raise RuntimeError("handler failed before sending anything")


@unpatched_timeout
@as_released
def test_2_handler_error_without_response_waits_the_whole_timeout() -> None:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Task exception was never retrieved" at GC
        sent = asyncio.run(_call(ORIGINAL_TIMEOUT_CALL, _raises_before_responding, timeout=0.3))
        gc.collect()
    elapsed = time.perf_counter() - start
    assert elapsed >= 0.28, "the original should sit out the timeout"
    assert sent == []  # ... and then return as if all went well: the error is swallowed


def test_2_patched_handler_error_returns_at_once(patched_timeout_call) -> None:
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="before sending anything"):
        asyncio.run(_call(patched_timeout_call, _raises_before_responding, timeout=5))
    assert time.perf_counter() - start < 2.5  # well before the timeout


async def _slow_app(scope, receive, send):
    await asyncio.sleep(1)
    await _ok_app(scope, receive, send)


async def _starts_then_slow(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await asyncio.sleep(0.1)  # past the timeout, but the response has started
    await send({"type": "http.response.body", "body": b"late but whole"})


@pytest.mark.parametrize("which", ["original", "patched"])
def test_2_timeout_semantics_kept(which, request) -> None:
    """Regression guard: the fix keeps BentoML's semantics (504 if nothing was sent within the
    timeout; no limit once the response has started, e.g. streaming)."""
    call = _timeout_call(which, request)
    start = time.perf_counter()
    sent = asyncio.run(_call(call, _slow_app, timeout=0.05))
    assert sent[0]["status"] == 504 and time.perf_counter() - start < 0.9  # before the app ends
    sent = asyncio.run(_call(call, _starts_then_slow, timeout=0.05))
    assert sent[0]["status"] == 200 and sent[-1]["body"] == b"late but whole"


async def _app_task(call) -> bool:
    """Whether `call` runs the app in the request's own task."""
    tasks = []

    async def app(scope, receive, send):
        tasks.append(asyncio.current_task())
        await _ok_app(scope, receive, send)

    await _call(call, app, timeout=5)
    return tasks == [asyncio.current_task()]


@unpatched_timeout
@as_released
def test_2_every_request_runs_in_a_task_of_its_own() -> None:
    assert asyncio.run(_app_task(ORIGINAL_TIMEOUT_CALL)) is False  # ensure_future per request


def test_2_patched_middleware_runs_it_in_the_requests_task(patched_timeout_call) -> None:
    assert asyncio.run(_app_task(patched_timeout_call)) is True


def test_2_an_app_s_own_timeout_is_its_own(patched_timeout_call) -> None:
    async def times_out(scope, receive, send):
        raise TimeoutError("the app's own")

    with pytest.raises(TimeoutError, match="the app's own"):
        asyncio.run(_call(patched_timeout_call, times_out, timeout=5))


def test_2_freeze_startup_objects_takes_them_out_of_collections() -> None:
    before = gc.get_freeze_count()
    try:
        fixes.freeze_startup_objects()
        assert gc.get_freeze_count() > before  # permanent generation: no full GC scans them
    finally:
        gc.unfreeze()


# ========================================================= 3. mime_type() per response


@pytest.fixture
def schema_builds(monkeypatch):
    """Counts pydantic JSON-schema generations (BaseModel.model_json_schema ends here)."""
    import pydantic.json_schema

    calls = []
    generate = pydantic.json_schema.GenerateJsonSchema.generate

    def counting(self, *args, **kwargs):
        calls.append(1)
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(pydantic.json_schema.GenerateJsonSchema, "generate", counting)
    return calls


async def _responses(output_spec, n: int) -> list[str]:
    value = [Ranked(ids=["u"])]
    return [(await output_spec.to_http_response(value, JSONSerde())).media_type for _ in range(n)]


def test_3_every_response_builds_the_output_json_schema(schema_builds, monkeypatch) -> None:
    output_spec = SpecProbe.apis["rank"].output_spec  # list[Ranked]: an IORootModel
    monkeypatch.setattr(output_spec, "media_type", None)  # BentoML's state: nothing cached
    assert asyncio.run(_responses(output_spec, 5)) == ["application/json"] * 5
    assert len(schema_builds) == 5  # one whole JSON schema per response, to learn "JSON"


def test_3_cache_media_types_builds_it_once(schema_builds, monkeypatch) -> None:
    for api in SpecProbe.apis.values():  # restored after the test
        monkeypatch.setattr(api.output_spec, "media_type", None)
    output_spec = SpecProbe.apis["rank"].output_spec
    fixes.cache_media_types(SpecProbe)  # at import, in the project
    built_at_import = len(schema_builds)
    assert asyncio.run(_responses(output_spec, 5)) == ["application/json"] * 5
    assert built_at_import >= 1 and len(schema_builds) == built_at_import  # none per response


def test_3_only_root_model_outputs_pay(schema_builds) -> None:
    """A BaseModel output (`-> Ranked`) never builds a schema in mime_type(): the fix matters
    for outputs like `list[...]`, `str`, `dict` (the Embedder's `top_k` and `load`)."""
    assert SpecProbe.apis["whole"].output_spec.mime_type() == "application/json"
    assert schema_builds == []


# ============================== 4. the inner hop's per-request work, 5. spans nobody reads


@pytest.fixture
def span_starts(monkeypatch):
    """The spans the OpenTelemetry SDK starts: the request's server span, and one per ASGI
    message sent or received (the middleware wraps `send` and `receive`)."""
    from opentelemetry.sdk.trace import Tracer

    spans = []
    start_span = Tracer.start_span

    def counting(self, name, *args, **kwargs):
        span = start_span(self, name, *args, **kwargs)
        spans.append((name, span.is_recording(), span.get_span_context().trace_flags.sampled))
        return span

    monkeypatch.setattr(Tracer, "start_span", counting)
    return spans


def _through_otel(service, path: str) -> dict:
    """A request to `path` through the OpenTelemetry middleware exactly as `service`'s worker
    configures it (BentoML's default: an SDK tracer provider, sample rate 0, no exporter)."""
    otel = _middleware(_asgi_app(service), otel_asgi.OpenTelemetryMiddleware)
    seen = {}

    async def app(scope, receive, send):
        seen["span_valid"] = trace.get_current_span().get_span_context().is_valid
        seen["send_wrapped"] = send is not original_send
        await _ok_app(scope, receive, send)

    async def original_send(message):
        pass

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:3000")],
        "server": ("127.0.0.1", 3000),
        "client": ("127.0.0.1", 50000),
    }
    asyncio.run(otel.cls(app, *otel.args, **otel.kwargs)(scope, receive, original_send))
    seen["processors"] = otel.kwargs["tracer_provider"]._active_span_processor._span_processors
    return seen


@as_released
def test_5_default_records_spans_nobody_reads(span_starts) -> None:
    """Sample rate 0 and no exporter, yet BentoML's sampler (TraceIdRatioBasedAlwaysRecording,
    "always recording, so that we can get the trace_id") makes every span a recording one."""
    seen = _through_otel(PlainProbe, "/top_k")
    assert seen == {"span_valid": True, "send_wrapped": True, "processors": ()}  # no exporter
    assert [name for name, _, _ in span_starts] == [
        "POST /top_k",
        "POST /top_k http send",
        "POST /top_k http send",
    ]
    assert all(recording and not sampled for _, recording, sampled in span_starts)


@as_released
def test_5_untraced_routes_skip_the_spans(span_starts) -> None:
    assert _through_otel(EntryProbe, "/recommend") == {
        "span_valid": False,
        "send_wrapped": False,
        "processors": (),
    }
    assert _through_otel(InnerProbe, "/top_k")["send_wrapped"] is False
    assert _through_otel(InnerProbe, "/load")["send_wrapped"] is False
    assert span_starts == []
    _through_otel(EntryProbe, "/recommend_batch")  # exact paths: a neighbour stays traced
    assert span_starts and span_starts[0][0] == "POST /recommend_batch"


@pytest.fixture
def urls_built(monkeypatch) -> list[str]:
    """The paths whose whole URL the OpenTelemetry middleware builds (to match exclusions)."""
    built: list[str] = []
    original = otel_asgi.get_host_port_url_tuple

    def counting(scope):
        built.append(scope["path"])
        return original(scope)

    monkeypatch.setattr(otel_asgi, "get_host_port_url_tuple", counting)
    return built


@as_released
def test_5_every_untraced_request_builds_its_url_to_match_the_patterns(urls_built) -> None:
    assert _through_otel(EntryProbe, "/recommend")["send_wrapped"] is False
    assert urls_built == ["/recommend"]


@as_released
def test_5_patched_untraced_routes_pass_at_once(urls_built, span_starts) -> None:
    fixes.skip_tracing_of(["/recommend"])  # undone after the test (as_released)
    assert _through_otel(EntryProbe, "/recommend")["send_wrapped"] is False
    assert urls_built == [] and span_starts == []
    _through_otel(PlainProbe, "/top_k")  # any other path: as before, traced
    assert set(urls_built) == {"/top_k"} and span_starts


def test_5_exclusions_are_exactly_those_paths():
    excluded = ExcludeList(
        fixes.untraced_routes_config("/recommend", "/recommend_batch")["tracing"]["excluded_urls"]
    )
    for path in ("/recommend", "/recommend_batch"):
        assert excluded.url_disabled(f"http://127.0.0.1:3000{path}")
    for path in ("/similar", "/recommend/x", "/recommendations", "/readyz"):
        assert not excluded.url_disabled(f"http://127.0.0.1:3000{path}")
    # trace_recommend: true leaves BentoML's setting alone
    assert fixes.untraced_routes_config() == {}


@as_released
def test_5_untraced_routes_lose_the_request_id_header(in_process) -> None:
    """Side effect, not a bug: BentoML takes its request id from the server span, so an
    untraced `@bentoml.api` answers without `X-BentoML-Request-ID` (and logs no trace ids)."""
    untraced = in_process(InnerProbe, is_main=False).post("/load", json={"tag": "t"})
    traced = in_process(LoadProbe, is_main=False).post("/load", json={"tag": "t"})
    assert untraced.status_code == traced.status_code == 200
    assert "x-bentoml-request-id" not in untraced.headers
    assert "x-bentoml-request-id" in traced.headers


def test_4_inner_service_skips_access_log_and_metrics() -> None:
    from bentoml._internal.server.http.access import AccessLogMiddleware

    plain = _asgi_app(PlainProbe, is_main=False)
    inner = _asgi_app(InnerProbe, is_main=False)
    assert _middleware(plain, AccessLogMiddleware) and _middleware(
        plain, RunnerTrafficMetricsMiddleware
    )
    assert not _middleware(inner, AccessLogMiddleware)
    assert not _middleware(inner, RunnerTrafficMetricsMiddleware)


# ============================================================================ 6. OpenAPI


def _correct_openapi(monkeypatch: pytest.MonkeyPatch) -> None:
    """Apply correct_openapi_spec to BentoML's own spec; `monkeypatch` undoes both globals it
    changes."""
    monkeypatch.setattr(Service, "openapi_spec", ORIGINAL_OPENAPI_SPEC)
    invalid = exception_components_schema()["InvalidArgument"]
    monkeypatch.setitem(invalid.properties, "detail", ORIGINAL_ERROR_DETAIL)
    fixes.correct_openapi_spec()


@pytest.fixture
def corrected_openapi(monkeypatch):
    _correct_openapi(monkeypatch)


def _spec(service) -> dict:
    return json.loads(json.dumps(service.openapi_spec.asdict()))  # what /docs.json serves


def _meta_schema_errors(spec: dict, version: str) -> list[str]:
    definitions = pytest.importorskip("schemathesis.specs.openapi.definitions")
    validator = {"3.0": definitions.OPENAPI_30_VALIDATOR, "3.1": definitions.OPENAPI_31_VALIDATOR}
    return [str(e).splitlines()[0][:120] for e in validator[version].iter_errors(spec)]


@unpatched_openapi
@as_released
def test_6_bentoml_spec_is_not_openapi_3_0_as_labelled() -> None:
    spec = _spec(SpecProbe)
    assert spec["openapi"] == "3.0.2"
    assert '{"type": "null"}' in json.dumps(spec)  # JSON Schema 2020-12, i.e. OpenAPI 3.1
    assert _meta_schema_errors(spec, "3.0"), "as 3.0 it is invalid: 3.0 has no type null"
    errors_as_31 = _meta_schema_errors(spec, "3.1")
    assert len(errors_as_31) == 1 and "3.0.2" in errors_as_31[0]  # only the label is wrong


@unpatched_openapi
@as_released
def test_6_bentoml_spec_body_optional_and_detail_a_string() -> None:
    spec = _spec(SpecProbe)
    assert "required" not in spec["paths"]["/rank"]["post"]["requestBody"]
    detail = spec["components"]["schemas"]["InvalidArgument"]["properties"]["detail"]
    assert detail["type"] == "string"


def test_6_what_bentoml_actually_answers(in_process) -> None:
    """The server's side of the disagreement: no body -> 400; bad body -> 400 whose `detail`
    is the list of pydantic errors."""
    client = in_process(SpecProbe)
    no_body = client.post("/rank")
    bad = client.post("/rank", json={"query": {"user_id": 1}})
    good = client.post("/rank", json={"query": {"user_id": "u1"}})
    assert no_body.status_code == 400
    assert bad.status_code == 400 and isinstance(bad.json()["detail"], list)
    assert bad.json()["detail"][0]["loc"] == ["query", "user_id"]
    assert good.status_code == 200 and good.json() == [{"ids": ["u1"]}]
    # Beyond the fix (upstream #4232 / open PR #5709): a 4xx BentoMLException answers a JSON
    # *array*, `[{"error": ...}]`, which neither BentoML's nor the corrected spec describes.
    missing = client.post("/missing", json={"tag": "v9"})
    assert missing.status_code == 404 and missing.json() == [{"error": "no model v9"}]
    # ... and an API whose parameters all have defaults takes no body at all.
    assert client.post("/defaults").status_code == 200


def test_6_corrected_spec(corrected_openapi) -> None:
    spec = _spec(SpecProbe)
    assert spec["openapi"] == "3.1.0"
    assert _meta_schema_errors(spec, "3.1") == []  # a valid OpenAPI 3.1 document
    for path in ("/rank", "/whole"):
        post = spec["paths"][path]["post"]
        assert post["requestBody"]["required"] is True
        assert {"413", "415"} <= set(post["responses"])  # RequestGuard's answers
    detail = spec["components"]["schemas"]["InvalidArgument"]["properties"]["detail"]
    assert {"type": "array", "items": {"type": "object"}} in detail["anyOf"]


def test_6_corrected_spec_only_requires_a_body_that_is_required(corrected_openapi) -> None:
    body = _spec(SpecProbe)["paths"]["/defaults"]["post"]["requestBody"]
    assert body.get("required", False) is False


def test_6_corrected_spec_with_a_task_endpoint(corrected_openapi) -> None:
    assert _spec(TaskProbe)["openapi"] == "3.1.0"


def test_6_correction_is_undone_after_the_test() -> None:
    """The fixture's restore works (so test order does not matter): the spec and the error
    schema are what they were before it, patched or not."""
    properties = exception_components_schema()["InvalidArgument"].properties
    spec, detail = inspect.getattr_static(Service, "openapi_spec"), properties["detail"]
    with pytest.MonkeyPatch.context() as monkeypatch:
        _correct_openapi(monkeypatch)
        assert inspect.getattr_static(Service, "openapi_spec") is not ORIGINAL_OPENAPI_SPEC
        assert properties["detail"] is not ORIGINAL_ERROR_DETAIL
    assert inspect.getattr_static(Service, "openapi_spec") is spec
    assert properties["detail"] is detail
    assert ORIGINAL_ERROR_DETAIL.type == "string"


# ======================================================== 7. the model version of a Bento


def test_7_bento_model_latest_resolves_past_the_bento(tmp_path) -> None:
    """A Bento built with gamerec:v1, served outside a container (global model store) after
    gamerec:v2 was saved: BentoML resolves `BentoModel("gamerec:latest")` to v2, because
    `Service.on_load_bento` re-pins only HuggingFaceModel references. pinned_model_tag says v1."""

    @bentoml.service(name="fixes_probe_model")
    class ModelProbe:
        model = bentoml.models.BentoModel("gamerec:latest")

        @bentoml.api
        def version(self) -> str:
            return str(self.model.tag)

    store = ModelStore(tmp_path / "models")
    with BentoMLContainer.model_store.patch(store):
        for version in ("v1", "v2"):
            with bentoml.models.create(f"gamerec:{version}") as model:
                (pathlib.Path(model.path) / "weights.txt").write_text(version)
        built_in = BentoModelInfo.from_bento_model(store.get("gamerec:v1"))
        bento = SimpleNamespace(  # what on_load_bento and pinned_model_tag read of a Bento
            tag="gamerec_bento:b1",
            info=SimpleNamespace(
                services=[SimpleNamespace(name=ModelProbe.name, models=[built_in])],
                all_models=[built_in],
            ),
        )
        ModelProbe.on_load_bento(bento)  # what bentoml serve <bento> does after importing
        reference = ModelProbe.models[0]

        assert ModelProbe.bento is bento and str(reference.tag) == "gamerec:latest"  # not re-pinned
        assert str(ModelProbe().model.tag) == "gamerec:v2"  # the bug: not the model built in
        assert fixes.pinned_model_tag(ModelProbe, reference) == "gamerec:v1"  # the fix
        # Outside a Bento it answers the reference's tag, and BentoML's store.get rewrites a
        # "latest" Tag in place when it resolves it: the reference now reads v2.
        assert str(reference.tag) == "gamerec:v2"
        assert fixes.pinned_model_tag(PlainProbe, reference) == "gamerec:v2"
        fresh = bentoml.models.BentoModel("gamerec:latest")
        assert fixes.pinned_model_tag(PlainProbe, fresh) == "gamerec:latest"


# ============================================= 8. start-up work redone for every request

unpatched_local_call = pytest.mark.skipif(
    APIMethod._local_call is not fixes._ORIGINAL_LOCAL_CALL,
    reason="APIMethod._local_call was already patched in this process (service.py imported?)",
)
unpatched_headers = pytest.mark.skipif(
    ServiceAppFactory._add_response_headers is fixes._add_response_headers,
    reason="_add_response_headers was already patched in this process (service.py imported?)",
)


@bentoml.service(name="fixes_probe_local")
class LocalProbe:
    @bentoml.api
    def echo(self, text: str) -> str:
        return text


@unpatched_local_call
@as_released
def test_8_every_request_builds_a_new_local_caller(monkeypatch) -> None:
    """What `api_endpoint` does per request, `getattr(instance, name).local`: a new wrapper,
    and a new `inspect.signature` of the method, each time."""
    signatures = []
    original = inspect.signature
    monkeypatch.setattr(inspect, "signature", lambda f: signatures.append(f) or original(f))
    instance = LocalProbe.inner()
    assert instance.echo.local is not instance.echo.local
    assert len(signatures) == 2


def test_8_patched_builds_it_once(monkeypatch) -> None:
    monkeypatch.setattr(APIMethod, "_local_call", fixes._local_call_once)
    instance, other = LocalProbe.inner(), LocalProbe.inner()
    first = instance.echo.local
    assert instance.echo.local is first and first("hi") == "hi"
    assert other.echo.local is not first  # one per service instance


def _count_format_reads(monkeypatch) -> list[int]:
    reads: list[int] = []
    provider = BentoMLContainer.logging_formatting
    original = provider.get
    monkeypatch.setattr(provider, "get", lambda: reads.append(1) or original(), raising=False)
    return reads


@unpatched_headers
@as_released
def test_8_every_response_reads_the_settings_again(monkeypatch) -> None:
    reads = _count_format_reads(monkeypatch)
    factory = SimpleNamespace(service=SimpleNamespace(name="probe"))
    for _ in range(3):
        ServiceAppFactory._add_response_headers(factory, Response())
    assert len(reads) == 3


def test_8_patched_headers_read_them_once_and_say_the_same(monkeypatch) -> None:
    reads = _count_format_reads(monkeypatch)
    fixes._header_formats.cache_clear()
    factory = SimpleNamespace(service=SimpleNamespace(name="probe"))
    responses = [Response() for _ in range(3)]
    for response in responses:
        fixes._add_response_headers(factory, response)
    assert len(reads) == 1
    assert responses[0].headers["server"] == "BentoML Service/probe"
    fixes._header_formats.cache_clear()


@bentoml.service(name="fixes_probe_api")
class ApiProbe:
    @bentoml.api
    async def plain(self, user_id: str, genre: str | None = None) -> Ranked:
        return Ranked(ids=[user_id, genre or "-"])

    @bentoml.api
    def blocking(self, user_id: str) -> Ranked:  # not a coroutine: BentoML's own path
        return Ranked(ids=[user_id])

    @bentoml.api
    async def with_context(self, user_id: str, ctx: bentoml.Context) -> Ranked:
        ctx.response.status_code = 201
        return Ranked(ids=[user_id])


@pytest.fixture
def deprecation_warnings(monkeypatch) -> list[str]:
    """The warnings of pydantic's deprecated attributes, counted (whatever the filters say)."""
    from pydantic._internal import _utils

    seen: list[str] = []
    monkeypatch.setattr(_utils, "warnings", SimpleNamespace(warn=lambda m, **_: seen.append(m)))
    return seen


def _api_answers(client) -> list[tuple[int, object]]:
    calls = [
        ("/plain", {"user_id": "u", "genre": "rpg"}),
        ("/plain", {"user_id": "u"}),
        ("/plain", {"user_id": 5}),  # invalid: 400 with pydantic's errors
        ("/blocking", {"user_id": "b"}),
        ("/with_context", {"user_id": "c"}),
    ]
    answers = []
    for path, body in calls:
        response = client.post(path, json=body)
        answers.append((response.status_code, response.json()))
    return answers


@as_released
def test_8_every_request_reads_model_fields_on_an_instance(
    in_process, deprecation_warnings
) -> None:
    client = in_process(ApiProbe)
    for _ in range(3):
        assert client.post("/plain", json={"user_id": "u"}).status_code == 200
    assert len(deprecation_warnings) == 3  # "Accessing the 'model_fields' attribute on the
    assert "model_fields" in deprecation_warnings[0]  # instance is deprecated", per request


@as_released
def test_8_patched_endpoint_answers_the_same_without_them(
    in_process, deprecation_warnings, monkeypatch
) -> None:
    released = _api_answers(in_process(ApiProbe))
    deprecation_warnings.clear()
    monkeypatch.setattr(ServiceAppFactory, "api_endpoint", fixes._api_endpoint)
    patched = _api_answers(in_process(ApiProbe))
    assert patched == released
    assert [status for status, _ in patched] == [200, 200, 400, 200, 201]
    # Only the APIs BentoML's own path still serves (not coroutines, a context) warn.
    assert len(deprecation_warnings) == 2
    assert fixes._plain_json_api(ApiProbe, "plain") is not None
    assert fixes._plain_json_api(ApiProbe, "blocking") is None
    assert fixes._plain_json_api(ApiProbe, "with_context") is None


# --- 9: connections that hold a worker -----------------------------------------------------
SLOW = ConnectionsConfig(
    header_timeout_s=0.3, body_timeout_s=5, keep_alive_s=1, max_connections=3, balance_interval_s=0
)
HEAD = b"GET / HTTP/1.1\r\nHost: probe\r\n"


async def _ok_sized_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})  # fmt: skip
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.asynccontextmanager
async def _uvicorn(http: object, app: object = _ok_sized_app) -> AsyncIterator[int]:
    """A real uvicorn (httptools, the protocol BentoML's worker gets) on a free port, in this
    event loop, serving `app`; yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=http, lifespan="off", log_config=None, timeout_keep_alive=1)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await serving


async def _trickle_headers(port: int, seconds: float) -> tuple[bytes, bool]:
    """Start a request's headers, then one more header byte every 0.1 s for `seconds`: what
    the server sent meanwhile, and whether it closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEAD)
    received, until = b"", time.monotonic() + seconds
    while time.monotonic() < until and not reader.at_eof():
        with contextlib.suppress(ConnectionError):
            writer.write(b"X")
        with contextlib.suppress(TimeoutError):
            received += await asyncio.wait_for(reader.read(4096), 0.1)
    closed = reader.at_eof()
    writer.close()
    return received, closed


def test_9_uvicorn_holds_a_connection_whose_headers_trickle() -> None:
    async def scenario() -> tuple[bytes, bool]:
        async with _uvicorn("httptools") as port:
            return await _trickle_headers(port, seconds=2.0)  # twice timeout_keep_alive

    assert asyncio.run(scenario()) == (b"", False)  # no answer, still open


def test_9_deadline_protocol_answers_408_and_closes() -> None:
    async def scenario() -> tuple[float, bytes, bool]:
        async with _uvicorn(fixes.deadline_protocol(SLOW)) as port:
            started = time.monotonic()
            received, closed = await _trickle_headers(port, seconds=2.0)
            return time.monotonic() - started, received, closed

    took, received, closed = asyncio.run(scenario())
    assert received.startswith(b"HTTP/1.1 408 ") and closed
    assert b"0.3 s" in received
    assert took < 1.0


def test_9_deadline_protocol_closes_a_silent_connection_and_caps_them() -> None:
    async def scenario() -> None:
        async with _uvicorn(fixes.deadline_protocol(SLOW)) as port:
            opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
            over_cap, _ = opened[-1]
            assert await asyncio.wait_for(over_cap.read(), 1) == b""  # closed at once
            silent, _ = opened[0]
            started = time.monotonic()
            assert await asyncio.wait_for(silent.read(), 2) == b""  # closed, no answer
            assert 0.1 < time.monotonic() - started < 1.0
            for _, writer in opened:
                writer.close()

    asyncio.run(scenario())


def test_9_deadline_protocol_serves_keep_alive_requests_as_before() -> None:
    """Requests whose headers come whole are served; the header deadline of the next request
    starts at its first byte, so a pause between requests (under keep_alive_s) is fine."""

    async def scenario() -> list[bytes]:
        async with _uvicorn(fixes.deadline_protocol(SLOW)) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            heads = []
            for _ in range(2):
                writer.write(HEAD + b"\r\n")
                heads.append(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2))
                await asyncio.wait_for(reader.readexactly(2), 2)  # the body: "ok"
                await asyncio.sleep(0.5)  # longer than header_timeout_s
            writer.close()
            return heads

    assert [h.split(b"\r\n")[0] for h in asyncio.run(scenario())] == [b"HTTP/1.1 200 OK"] * 2


def test_9_a_later_request_whose_headers_trickle_gets_408_too() -> None:
    """The deadline of a keep-alive connection's next request is armed only when its headers
    do not come whole in one read: a request that arrives whole arms no timer."""

    async def scenario() -> tuple[bytes, bytes]:
        async with _uvicorn(fixes.deadline_protocol(SLOW)) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(HEAD + b"\r\n")
            first = await asyncio.wait_for(reader.readuntil(b"ok"), 2)
            writer.write(HEAD)  # the next request's headers, never finished
            late = await asyncio.wait_for(reader.read(4096), 2)
            writer.close()
            return first, late

    first, late = asyncio.run(scenario())
    assert first.startswith(b"HTTP/1.1 200 ") and late.startswith(b"HTTP/1.1 408 ")


def test_9_the_worker_uvicorn_config_gets_the_protocol(monkeypatch) -> None:
    monkeypatch.setattr(uvicorn.Config, "__init__", fixes._ORIGINAL_UVICORN_CONFIG_INIT)
    fixes.serve_with_connection_limits(SLOW, Admission(max_in_flight=1, retry_after_s=1))
    built_like_bentoml = uvicorn.Config(app=_ok_app, backlog=2048, timeout_keep_alive=5)
    assert issubclass(built_like_bentoml.http, HttpToolsProtocol)
    assert uvicorn.Config(app=_ok_app, http="h11").http == "h11"  # an explicit choice stays


async def _post(port: int, path: bytes, body: bytes = b"{}", length: int | None = None):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    size = len(body) if length is None else length
    writer.write(
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (path, size, body)
    )
    return reader, writer


def test_9_a_request_not_admitted_gets_503_before_the_app() -> None:
    admission = Admission(max_in_flight=1, retry_after_s=7)
    admission.in_flight = 1  # the worker is full

    async def scenario() -> list[bytes]:
        async with _uvicorn(fixes.deadline_protocol(SLOW, admission)) as port:
            answers = []
            for path in (b"/recommend", b"/readyz"):
                reader, writer = await _post(port, path)
                answers.append(await asyncio.wait_for(reader.read(4096), 2))
                writer.close()
            return answers

    refused, probe = asyncio.run(scenario())
    assert refused.startswith(b"HTTP/1.1 503 ") and b"retry-after: 7\r\n" in refused
    assert b'"error":"overloaded' in refused
    assert probe.startswith(b"HTTP/1.1 200 ") and probe.endswith(b"ok")  # the app answered
    assert admission.refused == 1


class _HeldApp:
    """An ASGI app that reads the body, then answers only once released; counts its calls."""

    def __init__(self) -> None:
        self.release, self.calls = asyncio.Event(), 0

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        while (await receive()).get("more_body"):
            pass
        await self.release.wait()
        await _ok_sized_app(scope, receive, send)


def test_9_the_protocol_counts_what_it_admits_at_once() -> None:
    """Requests that arrive together are admitted against a count that includes each other:
    one slot, five requests at once, one reaches the app and four get 503 (a count kept in
    the app, as before, saw none of them in flight and admitted all five). A client
    trickling its body holds no slot; probes and admin requests are never refused; the
    slot is free again once the answer is sent."""
    admission, app = Admission(max_in_flight=1, retry_after_s=7), _HeldApp()

    async def scenario() -> tuple[list[bytes], list[bytes], bytes]:
        roomy = SLOW.model_copy(update={"max_connections": 100})
        async with _uvicorn(fixes.deadline_protocol(roomy, admission), app) as port:
            try:
                trickling = await _post(port, b"/recommend", b"{", length=2)  # 1 byte of 2
                together = [await _post(port, b"/recommend") for _ in range(5)]
                await asyncio.sleep(0.3)
                assert admission.in_flight == 1 and app.calls == 2  # the trickle: no slot
                others = [await _post(port, path) for path in (b"/readyz", b"/admin/reload")]
                await asyncio.sleep(0.2)
                assert admission.in_flight == 1 and app.calls == 4  # not refused, not counted
                app.release.set()
                answers = [await asyncio.wait_for(r.read(4096), 2) for r, _ in together + others]
                assert admission.in_flight == 0
                trickling[1].write(b"}")  # its body is whole: admitted, counted, answered
                last = await asyncio.wait_for(trickling[0].read(4096), 2)
                for _, writer in [*together, *others, trickling]:
                    writer.close()
            finally:  # a failed check must not leave the app's tasks held
                app.release.set()
            return answers[:5], answers[5:], last

    together, others, last = asyncio.run(scenario())
    statuses = sorted(answer.split(b" ", 2)[1] for answer in together)
    assert statuses == [b"200"] + [b"503"] * 4
    assert all(b"retry-after: 7\r\n" in a for a in together if b" 503 " in a[:13])
    assert [a.split(b" ", 2)[1] for a in others] == [b"200", b"200"]
    assert last.startswith(b"HTTP/1.1 200 ") and admission.in_flight == 0
    assert admission.refused == 4


# --- 10: connections spread unevenly over the entry workers --------------------------------
def test_10_one_turn_of_a_worker_accepts_several_waiting_connections() -> None:
    """The mechanism: connections waiting on the socket that the workers share are accepted
    several at a time by whichever worker's loop (uvloop, as BentoML's) turns first, so
    clients that connect at once land together."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    clients = [socket.create_connection(listener.getsockname()) for _ in range(8)]
    made: list[asyncio.BaseTransport] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.append(transport)
            asyncio.get_running_loop().stop()  # after this turn of the loop

    loop = uvloop.new_event_loop()
    try:
        server = loop.run_until_complete(loop.create_server(Probe, sock=listener))
        loop.run_forever()
        assert len(made) > 1, "one connection a turn: the workers would take turns"
        server.close()
    finally:
        loop.close()
        for client in clients:
            client.close()


def _two_workers(directory) -> tuple[WorkerCounts, WorkerCounts]:
    """The counts of this worker and of another live one (this test's parent process)."""
    return WorkerCounts(directory, os.getpid()), WorkerCounts(directory, os.getppid())


def test_10_a_worker_over_its_share_closes_one_connection_after_its_response(tmp_path) -> None:
    limits = SLOW.model_copy(update={"max_connections": 10})
    mine, other = _two_workers(tmp_path)  # the other worker: no connection
    share = ConnectionShare(mine, workers=2, interval_s=60)

    async def scenario() -> list[bytes]:
        async with _uvicorn(fixes.deadline_protocol(limits, share=share)) as port:
            streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            await asyncio.sleep(0.1)  # both accepted: 2 here, a share of 1 each
            seen_by_the_other = other.others(CONNECTIONS)
            answers = []
            for reader, writer in streams:
                writer.write(HEAD + b"\r\n")
                answers.append(await asyncio.wait_for(reader.read(4096), 2))
            for _, writer in streams:
                writer.close()
            await asyncio.sleep(0.1)
            return [*answers, seen_by_the_other, other.others(CONNECTIONS)]

    first, second, while_open, after = asyncio.run(scenario())
    assert first.startswith(b"HTTP/1.1 200 ") and b"connection: close\r\n" in first.lower()
    assert second.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in second.lower()
    assert (while_open, after) == (2, 0)  # what the other workers read of this one


@contextlib.contextmanager
def _worker_process(directory, connections: int, in_flight: int):
    """Another worker, in a process of its own, that published its counts."""
    code = (
        "import sys, time; from serving.balance import *; "
        f"c = WorkerCounts(__import__('pathlib').Path({str(directory)!r}), "
        "__import__('os').getpid()); "
        f"c.publish(CONNECTIONS, {connections}); c.publish(IN_FLIGHT, {in_flight}); "
        "print('ready', flush=True); time.sleep(60)"
    )
    worker = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert worker.stdout.readline() == b"ready\n"
        yield worker
    finally:
        worker.kill()
        worker.wait()


def test_10_counts_of_dead_workers_do_not_count(tmp_path) -> None:
    share = ConnectionShare(WorkerCounts(tmp_path, os.getpid()), workers=2, interval_s=0.01)
    with _worker_process(tmp_path, connections=6, in_flight=0) as other:
        assert not share.should_close(4)  # 4 of 10: under its share of 5
        other.kill()  # SIGKILL: its file stays behind
        os.waitid(os.P_PID, other.pid, os.WEXITED | os.WNOWAIT)  # dead, a zombie: not reaped
        share.counts.rescan_s = 0
        time.sleep(0.02)
        assert [share.should_close(4) for _ in range(2)] == [True, False]  # 4 of 4: one a turn
        assert not (tmp_path / str(other.pid)).exists()  # and its file is gone
    time.sleep(0.02)
    assert share.should_close(4)


def test_10_a_worker_removes_the_counts_of_servers_gone(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    stale = tmp_path / f"gamerec-workers-{gone.pid}"
    stale.mkdir()
    (stale / "123").write_bytes(bytes(16))
    counts = WorkerCounts.of_this_worker()
    assert not stale.exists()
    assert counts.path == tmp_path / f"gamerec-workers-{os.getppid()}" / str(os.getpid())


def test_9_admission_counts_the_requests_of_every_worker(tmp_path) -> None:
    """With a limit of 3 for the server: 2 in flight in another worker's process leave this
    one room for 1; once that worker is gone, for 3."""
    admission = Admission(max_in_flight=3, retry_after_s=1)
    admission.share_with(WorkerCounts(tmp_path, os.getpid(), rescan_s=0))
    with _worker_process(tmp_path, connections=0, in_flight=2) as other:
        assert admission.admits("/recommend")
        admission.add(1)
        assert not admission.admits("/recommend")
        assert admission.admits("/readyz")  # probes: never refused
        other.kill()
        other.wait()
    assert admission.admits("/recommend")
    admission.add(2)
    assert not admission.admits("/recommend")
    assert admission.refused == 2


# ========================================== 11. a body serialized whole, sent in pieces


async def _sent(response) -> list[dict]:
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    await response({"type": "http"}, None, send)
    return sent


async def _whole_response():
    return await SpecProbe.apis["whole"].output_spec.to_http_response(
        Ranked(ids=["u"]), JSONSerde()
    )


@as_released
def test_11_a_json_answer_goes_out_as_two_body_messages() -> None:
    start, *bodies = asyncio.run(_sent(asyncio.run(_whole_response())))
    assert dict(start["headers"])[b"content-length"] == b"13"
    assert [(b["body"], b["more_body"]) for b in bodies] == [
        (b'{"ids":["u"]}', True),
        (b"", False),  # one more message through every middleware's send
    ]


@as_released
def test_11_patched_it_goes_whole_with_its_length(monkeypatch) -> None:
    monkeypatch.setattr(IterableResponse, "__init__", fixes._whole_body_init)
    monkeypatch.setattr(IterableResponse, "__call__", fixes._whole_body_call)
    start, *bodies = asyncio.run(_sent(asyncio.run(_whole_response())))
    assert dict(start["headers"])[b"content-length"] == b"13"
    assert [(b["body"], b.get("more_body", False)) for b in bodies] == [(b'{"ids":["u"]}', False)]

    def chunks():
        yield b"a"
        yield b"b"

    streamed = IterableResponse(chunks(), media_type="text/plain")  # a stream stays one
    assert [m.get("body") for m in asyncio.run(_sent(streamed))] == [None, b"a", b"b", b""]


# ====================================== 12. the labels of the request metrics, per request


@pytest.fixture
def label_lookups(monkeypatch) -> list[dict]:
    from prometheus_client.metrics import MetricWrapperBase

    looked_up: list[dict] = []
    labels = MetricWrapperBase.labels

    def counting(self, *args, **kwargs):
        looked_up.append(kwargs)
        return labels(self, *args, **kwargs)

    monkeypatch.setattr(MetricWrapperBase, "labels", counting)
    return looked_up


def _metrics_middleware(in_process, status: int = 200):
    """BentoML's metrics middleware as the service's app builds it, around a tiny app."""

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    # `in_process` (the fixture) unregisters the metrics the middleware registers, after the test
    found = _middleware(_asgi_app(PlainProbe), RunnerTrafficMetricsMiddleware)
    return found.cls(app, *found.args, **found.kwargs)


def _count(middleware, paths: list[str]) -> dict[str, float]:
    """Requests for `paths` through the middleware; then its request counts, durations and
    requests in progress, per endpoint."""

    async def requests():
        for path in paths:
            await middleware({"type": "http", "path": path}, None, _discard)

    asyncio.run(requests())
    names = {"service_name": "", "service_version": "not available", "runner_name": None}
    counts = {}
    for path in set(paths):
        total = middleware.metrics_request_total.labels(
            endpoint=path, http_response_code=200, **names
        )
        progress = middleware.metrics_request_in_progress.labels(endpoint=path, **names)
        counts[path] = (total._value.get(), progress._value.get())
    return counts


async def _discard(message):
    pass


@as_released
def test_12_every_request_looks_up_four_labelled_children(in_process, label_lookups) -> None:
    middleware = _metrics_middleware(in_process)
    _count(middleware, ["/recommend"])  # the middleware sets itself up on its first request
    label_lookups.clear()
    _count(middleware, ["/recommend"] * 5)
    assert len(label_lookups) - 2 * 1 == 4 * 5  # 4 a request (2 lookups are _count's own)


@as_released
def test_12_patched_it_looks_them_up_once_and_counts_the_same(
    in_process, label_lookups, monkeypatch
) -> None:
    middleware = _metrics_middleware(in_process)
    released = _count(middleware, ["/recommend", "/recommend", "/similar"])
    monkeypatch.setattr(RunnerTrafficMetricsMiddleware, "__call__", fixes._metrics_call)
    label_lookups.clear()
    patched = _count(middleware, ["/recommend", "/recommend", "/similar"] * 10)
    assert patched == {"/recommend": (22.0, 0.0), "/similar": (11.0, 0.0)}
    assert released == {"/recommend": (2.0, 0.0), "/similar": (1.0, 0.0)}
    # 4 lookups for each endpoint the first time, none after (4 are _count's own)
    assert len(label_lookups) == 4 * 2 + 4


# ================================================ 13. a response's head and body, two writes


@pytest.fixture
def socket_writes(monkeypatch) -> list[bytes]:
    """What servers in this process write to their sockets (asyncio's own loop, as `_uvicorn`
    runs under `asyncio.run`), one entry a write."""
    from asyncio.selector_events import _SelectorSocketTransport

    writes: list[bytes] = []
    write = _SelectorSocketTransport.write

    def recording(self, data):
        if data and isinstance(self._protocol, HttpToolsProtocol):  # the server's, not a client's
            writes.append(bytes(data))
        return write(self, data)

    monkeypatch.setattr(_SelectorSocketTransport, "write", recording)
    return writes


async def _exchange(http, request: bytes, app=_ok_sized_app, then: bytes = b"") -> bytes:
    """One request to a real uvicorn with protocol `http` (`then`: sent once the server has
    answered something, e.g. a 100 Continue); what the client read."""
    async with _uvicorn(http, app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        received = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        if then:
            writer.write(then)
            received += await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        with contextlib.suppress(TimeoutError):
            received += await asyncio.wait_for(reader.read(4096), 0.2)
        writer.close()
        return received


def test_13_uvicorn_writes_the_head_and_the_body_apart(socket_writes) -> None:
    received = asyncio.run(_exchange("httptools", HEAD + b"\r\n"))
    assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b"ok")
    assert len(socket_writes) == 2 and socket_writes[1] == b"ok"


def test_13_deadline_protocol_writes_them_at_once(socket_writes) -> None:
    received = asyncio.run(_exchange(fixes.deadline_protocol(SLOW), HEAD + b"\r\n"))
    assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b"ok")
    assert socket_writes == [received]


def test_13_a_head_without_body_and_a_100_continue_still_go_out(socket_writes) -> None:
    protocol = fixes.deadline_protocol(SLOW)
    head_only = asyncio.run(_exchange(protocol, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert head_only.startswith(b"HTTP/1.1 200 ") and head_only.endswith(b"\r\n\r\n")

    async def echo_length(scope, receive, send):
        body = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"1")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"%d" % len(body)})

    expecting = b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    received = asyncio.run(_exchange(protocol, expecting, echo_length, then=b"abc"))
    assert received.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 ")
    assert received.endswith(b"3")
