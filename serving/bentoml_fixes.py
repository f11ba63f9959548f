"""Every workaround for BentoML 1.4.40 in this project, in one place. Each has a fast test in
tests/unit/test_bentoml_fixes.py that shows the bug on unpatched BentoML and its absence with
the fix; the measured effects are in docs/performance.md.

They reach into BentoML's internals, so `pyproject.toml` pins the exact version they were
written for and `check_bentoml_version` stops the service on any other (1.4.40 is the newest
1.4 release as of 2026-12). On an upgrade: run those tests unpatched first, drop what is fixed.

1. Connection recycling. The `bentoml.depends()` client (`_bentoml_impl/client/proxy2.py`,
   `SessionManager`) replaces its aiohttp session every `runner_connection.max_requests` calls
   (default 100) and closes the old one while other requests still use it: they fail with
   "Cannot write to closing transport" / "Server disconnected". Recycling came with PR 5522;
   issue 5540 reported its first failure, fixed in 1.4.35 by PR 5541 (a connector per
   session); the close-while-in-flight race remains and has no upstream issue. `NO_RECYCLING`
   switches recycling off for the dependency (the caller's client reads the *called*
   service's `runner_connection`); over a local Unix socket there is nothing to balance.
2. Timers that outlive their requests (no upstream issue; the closest, issue 5642, is about the
   same middleware). `traffic.TimeoutMiddleware.__call__` arms `loop.call_later(timeout)` per
   request and never cancels it; each timer handle keeps a copy of the request's context
   (its tracing span included) for `traffic.timeout` seconds, so the heap grows under load and
   full garbage collections stall a worker for 100-300 ms. A handler that fails before
   responding also made the original wait out the whole timeout and swallow the error, and it
   runs every request's app in a task of its own (`ensure_future` and `asyncio.wait` per
   request). `patch_timeout_middleware` runs the app in the request's own task under a
   deadline that the response's first message lifts, and re-raises at once;
   `freeze_startup_objects` moves the objects made at start-up out of the collector's way.
3. A JSON schema per response (no upstream issue; issue 4784 is the same pattern in the 1.1
   code). `IOMixin.mime_type()` calls `model_json_schema()` on every response of an API whose
   output is a root model (`list[...]`, `str`: the Embedder's `top_k` and `load`,
   `recommend_batch`), only to learn that the answer is JSON. `cache_media_types` computes it
   once per API.
4. The hop between the services: the inner service is reached only by the entry service over a
   local socket, so `inner_service_config` switches off what is per request and already done by
   the entry service: the access log, the Prometheus metrics and the tracing spans.
5. Spans nobody reads (by design, PR 2167: "always record, but not always export"). BentoML's
   sampler records every span even with sample rate 0 and no exporter (the defaults), about a
   quarter of the entry service's CPU per recommendation. `untraced_routes_config` excludes the
   hot routes (the mechanism of PR 2843) unless `trace_recommend` says otherwise; those routes
   then answer without `X-BentoML-Request-ID`. Even excluded, a request first has its whole URL
   built and matched against the patterns; `skip_tracing_of` lets these exact paths through
   the middleware at once.
6. The OpenAPI spec (`/docs.json`): labelled 3.0.2 but written in JSON Schema 2020-12 (issue
   3177 is the closest report), request bodies not marked required, and the 400's `detail`
   declared a string where the server sends the list of validation errors (issue 4232).
   `correct_openapi_spec`.
7. A Bento's model version (no upstream issue): served outside a container, BentoML resolves
   `BentoModel("gamerec:latest")` against the local store (`Service.on_load_bento` re-pins only
   Hugging Face models), so a newer model than the one built in could serve.
   `pinned_model_tag`.
8. Start-up work redone per request (no upstream issue; the closest is issue 3431, BentoML's
   per-request overhead against FastAPI). For every request to a `@bentoml.api`,
   `ServiceAppFactory.api_endpoint` takes `getattr(instance, name).local`, and
   `APIMethod.__get__` builds a new local caller each time (`inspect.signature`,
   `functools.wraps`); `ServiceAppFactory._add_response_headers` is a simple_di `@inject`
   function (`inspect.Signature.bind_partial` per call) that reads the logging format and the
   `http.response.trace_id` setting on every response. Together about a tenth of the entry
   worker's event-loop time at one client (py-spy, docs/performance.md). `api_endpoint` itself
   imports six names, runs `inspect` checks on the method and reads `model_fields` on the
   parsed input (an instance: pydantic 2.11+ answers through its deprecation-warning machinery)
   for every request. `reuse_per_request_work` builds each local caller once per service
   instance, reads the two settings once, and answers a JSON request to a plain API (a
   coroutine taking fields: `/recommend`) with that work done once per API.
9. Connections that hold a worker (uvicorn issue 157, "Further timeouts and resource
   limiting": `--timeout-request-start` was planned and never made). BentoML 1.4.40 builds
   uvicorn's `Config` itself (`_bentoml_impl/worker/service.py`) with only `backlog` and
   `timeout_keep_alive` (the `bentoml serve --timeout-keep-alive` flag, default 5 s), no
   `limit_concurrency`, no setting in BentoML's configuration for any of them. uvicorn 0.54
   arms no timer while a request's headers arrive, and cancels its keep-alive timer on every
   byte received (`data_received`): a client that trickles its headers a byte at a time holds
   its connection forever. `serve_with_connection_limits` makes the worker's uvicorn use
   `deadline_protocol`: headers must be whole within `connections.header_timeout_s` (else 408
   and close), idle keep-alive connections close after `connections.keep_alive_s`, and a
   connection beyond `connections.max_connections` is closed at once. (uvicorn's
   `limit_concurrency` is no cap: at that many connections it answers every request of every
   connection with a plain-text 503.) The body's deadline is `RequestGuard`'s. The same
   protocol answers the 503 of a request that `Admission` (serving/guard.py) does not admit,
   without an ASGI task, and counts the requests it admits: BentoML puts a service's own
   middleware inside its metrics, tracing, access-log and timeout middlewares, which made a
   refusal cost more than the served requests could spare under overload, and a count kept
   there lagged the protocol's decisions (docs/overload.md). BentoML's own `traffic.max_concurrency`
   answers 429 without `Retry-After`, inside those same middlewares.
10. Connections spread unevenly over the entry workers (issue 5426, open; PR 5557 proposed
   SO_REUSEPORT and was closed unmerged). The workers accept from one shared socket, and the
   first to wake accepts every connection waiting: 8 clients connecting at once often all
   land on one worker of two, which serves them alone for as long as they stay connected.
   `deadline_protocol` with a `ConnectionShare` (serving/balance.py) answers a request with
   `Connection: close` while its worker holds more than its share of the server's
   connections (`connections.balance_interval_s`); the client's next connection mostly goes
   to the idle worker.
11. A whole body sent in two messages (no upstream issue). `IOMixin.to_http_response` wraps a
   model serialized whole (one bytes chunk) in an `IterableResponse`, which sends it as a body
   message with `more_body` and then an empty one: a second trip through every middleware's
   send wrapper (metrics, access log, timeout, error handlers) and uvicorn's.
   `send_whole_bodies_whole` sends such a body as one message.
12. Label lookups per request (no upstream issue). `RunnerTrafficMetricsMiddleware` calls
   `labels(**names)` on four metrics for every request (argument checks, a lock, a dict); the
   middleware was about 4% of a request's CPU at one client. `reuse_metric_labels` looks each
   labelled child up once per endpoint and status: the same metrics, labels and values.
13. Two writes per response (uvicorn 0.55's httptools protocol; no upstream issue found). It
   writes the response head on `http.response.start` and the body on `http.response.body`: two
   TCP segments (its sockets set TCP_NODELAY) and two wake-ups of the client.
   `deadline_protocol` (fix 9) holds the head until the body's first bytes and writes both at
   once (`_OneWrite`).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import json
import re
import weakref
from collections.abc import Callable, Iterable
from importlib.metadata import version
from timeit import default_timer
from types import SimpleNamespace

import attr
import bentoml
import uvicorn
from _bentoml_impl.serde import JSONSerde
from _bentoml_impl.server.app import ServiceAppFactory
from _bentoml_sdk.io_models import ARGS, KWARGS, IterableResponse
from _bentoml_sdk.method import APIMethod
from _bentoml_sdk.service.factory import Service
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.context import server_context, trace_context
from bentoml._internal.server.http import instruments, traffic
from bentoml._internal.service.openapi.specification import OpenAPISpecification, Schema
from bentoml._internal.service.openapi.utils import exception_components_schema
from bentoml._internal.utils import get_original_func
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from serving.balance import ConnectionShare, WorkerCounts
from serving.guard import GUARD_RESPONSES, Admission, ErrorMessage, InFlight
from serving.settings import ConnectionsConfig

BENTOML_VERSION = "1.4.40"  # the version these fixes were written for and tested on

NO_RECYCLING = {"max_requests": 2**31 - 1, "max_age": 1e9}


def check_bentoml_version(installed: str | None = None) -> None:
    """Refuse to run on another BentoML: the fixes below patch its internals."""
    installed = installed or version("bentoml")
    if installed != BENTOML_VERSION:
        raise RuntimeError(
            f"GameRec's BentoML workarounds (serving/bentoml_fixes.py) are written for bentoml "
            f"{BENTOML_VERSION}, but {installed} is installed: install bentoml=={BENTOML_VERSION} "
            "(pyproject.toml pins it), or port and re-test the fixes first"
        )


def apply_global_fixes(
    connections: ConnectionsConfig,
    admission: Admission,
    entry_workers: int = 1,
    untraced_routes: Iterable[str] = (),
) -> None:
    """Fixes 2, 5 (its fast path for `untraced_routes`), 6, 8, 9 to 13, which replace BentoML's
    or uvicorn's own code; applied once per process (`entry_workers`: of the server, for fix
    10)."""
    global _applied
    if _applied:
        return
    check_bentoml_version()
    patch_timeout_middleware()
    skip_tracing_of(untraced_routes)
    correct_openapi_spec()
    reuse_per_request_work()
    serve_with_connection_limits(connections, admission, entry_workers)
    send_whole_bodies_whole()
    reuse_metric_labels()
    _applied = True


_applied = False


def inner_service_config(*routes: str) -> dict:
    """`@bentoml.service` settings of a service that only the entry service calls (fix 1, 4)."""
    return {
        "runner_connection": NO_RECYCLING,
        "logging": {"access": {"enabled": False}},
        "metrics": {"enabled": False},
        **untraced_routes_config(*routes),
    }


def untraced_routes_config(*routes: str) -> dict:
    """`@bentoml.service` settings that exclude these exact paths from tracing (fix 5).

    A service default: `services.<Name>.tracing` in BentoML's configuration file overrides it.
    No routes, no setting (the configured exclusions stay as they are).
    """
    if not routes:
        return {}
    return {"tracing": {"excluded_urls": [f"{re.escape(r)}$" for r in routes]}}


_ORIGINAL_OTEL_CALL = OpenTelemetryMiddleware.__call__


def skip_tracing_of(routes: Iterable[str]) -> None:
    """Fix 5, faster: a request for one of these exact paths passes the OpenTelemetry
    middleware at once. Its own exclusion (the `excluded_urls` that `untraced_routes_config`
    sets) first builds the request's whole URL and matches it against the patterns: 1-2% of a
    request's CPU (docs/performance.md, round 8)."""
    untraced = frozenset(routes)
    if not untraced:
        return

    async def call(self: OpenTelemetryMiddleware, scope: Scope, receive: Receive, send: Send):
        if scope.get("path") in untraced:
            return await self.app(scope, receive, send)
        return await _ORIGINAL_OTEL_CALL(self, scope, receive, send)

    OpenTelemetryMiddleware.__call__ = call


def cache_media_types(*services: object) -> None:
    """Fix 3: each API's response media type, computed once instead of per response."""
    for service in services:
        for api in service.apis.values():
            api.output_spec.media_type = api.output_spec.mime_type()


async def _timeout_middleware_call(
    self: traffic.TimeoutMiddleware, scope: Scope, receive: Receive, send: Send
) -> None:
    """BentoML's `TimeoutMiddleware.__call__`, with its semantics (504 if nothing is sent
    within the timeout; no limit once the response has started) but no timer left behind and
    no task of its own: the app runs in the request's task, under a deadline that the
    response's first message lifts."""
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    started = False

    async def starting(message: dict) -> None:
        nonlocal started
        if not started:
            started = True
            if not deadline.expired():
                deadline.reschedule(None)
        await send(message)

    try:
        async with asyncio.timeout(self.timeout) as deadline:
            await self.app(scope, receive, starting)
    except TimeoutError:
        if started or not deadline.expired():
            raise  # not this deadline's: the app's own
        message = f"Not able to process the request in {self.timeout} seconds"
        await JSONResponse({"error": message}, status_code=504)(scope, receive, send)


def patch_timeout_middleware() -> None:
    traffic.TimeoutMiddleware.__call__ = _timeout_middleware_call


def freeze_startup_objects() -> None:
    """Call at the end of a worker's `__init__`: start-up objects are never garbage."""
    gc.collect()
    gc.freeze()


def correct_openapi_spec() -> None:
    """Fix 6: make BentoML 1.4.40's OpenAPI spec (`/docs.json`) say what this API does.

    - It is labelled OpenAPI 3.0.2, but its schemas are pydantic's and FastAPI's JSON Schema
      2020-12, i.e. OpenAPI 3.1 (`propertyNames`, `"type": "null"`): relabelled 3.1.0.
    - The request body of a `@bentoml.api` endpoint with a required parameter is required
      (without one: 400), not optional.
    - A body that fails validation gets 400 with `detail`: the list of pydantic errors, where the
      spec's `InvalidArgument` says a string.
    - `RequestGuard`'s 413 and 415 are added to every API that takes a body.
    """
    generate = Service.openapi_spec.fget
    error = {"application/json": {"schema": ErrorMessage.model_json_schema()}}
    guard = {s: {"description": d, "content": error} for s, d in GUARD_RESPONSES.items()}

    def corrected(service: Service) -> OpenAPISpecification:
        spec = generate(service)
        for item in spec.paths.values():
            post = item.post
            if not (isinstance(post, dict) and "requestBody" in post):
                continue  # not an API of BentoML's (FastAPI's own routes are right)
            api = service.apis.get(post.get("x-bentoml-name", ""))
            if api is None:
                continue
            fields = api.input_spec.model_fields.values()
            if any(field.is_required() for field in fields):
                post["requestBody"]["required"] = True
            post["responses"] = {**post["responses"], **guard}
        return attr.evolve(spec, openapi="3.1.0")

    Service.openapi_spec = property(corrected)
    invalid = exception_components_schema()["InvalidArgument"]
    assert invalid.properties is not None
    invalid.properties["detail"] = Schema(
        title="Error Detail",
        anyOf=[Schema(type="string"), Schema(type="array", items=Schema(type="object"))],
    )


def pinned_model_tag(service: bentoml.Service, reference: bentoml.models.BentoModel) -> str:
    """Fix 7: inside a Bento, the exact model version it was built with; else the reference's.

    BentoML re-resolves `BentoModel("gamerec:latest")` against the local store when a Bento
    serves outside a container, which could serve a newer model than the one built in.
    """
    bento = getattr(service, "bento", None)
    if bento is not None:
        for model in bento.info.all_models:
            if model.tag.name == reference.tag.name:
                return str(model.tag)
    return str(reference.tag)


# Fix 8: the local caller of each API, per service instance (weakly: instances may come and go).
_LOCAL_CALLERS: weakref.WeakKeyDictionary[object, dict[str, Callable]] = weakref.WeakKeyDictionary()
_ORIGINAL_LOCAL_CALL = APIMethod._local_call


def _local_call_once(self: APIMethod, instance: object) -> Callable:
    """BentoML's `APIMethod._local_call`, built once per (API, service instance)."""
    try:
        callers = _LOCAL_CALLERS.setdefault(instance, {})
    except TypeError:  # an instance that cannot be weakly referenced or hashed
        return _ORIGINAL_LOCAL_CALL(self, instance)
    if self.name not in callers:
        callers[self.name] = _ORIGINAL_LOCAL_CALL(self, instance)
    return callers[self.name]


@functools.cache
def _header_formats() -> tuple[str, str | None]:
    """The span id's format, and the trace id's when `http.response.trace_id` is on: the
    worker's configuration, fixed once it serves."""
    formats = BentoMLContainer.logging_formatting.get()
    with_trace = BentoMLContainer.http.response.trace_id.get()
    return formats["span_id"], formats["trace_id"] if with_trace else None


def _add_response_headers(self: ServiceAppFactory, resp: Response) -> None:
    """BentoML's `ServiceAppFactory._add_response_headers`, with the settings read once."""
    span_format, trace_format = _header_formats()
    resp.headers["Server"] = f"BentoML Service/{self.service.name}"
    if trace_context.request_id is not None:
        resp.headers["X-BentoML-Request-ID"] = format(trace_context.request_id, span_format)
    if trace_format is not None and trace_context.trace_id is not None:
        resp.headers["X-BentoML-Trace-ID"] = format(trace_context.trace_id, trace_format)


_ORIGINAL_API_ENDPOINT = ServiceAppFactory.api_endpoint
_JSON_SERDE = JSONSerde()


@attr.frozen
class _PlainJsonApi:
    """What `api_endpoint` works out per request about an API that takes a JSON object of
    fields and is a coroutine: worked out once."""

    fields: tuple[str, ...]
    input_spec: type
    output_spec: type


@functools.cache
def _plain_json_api(service: Service, name: str) -> _PlainJsonApi | None:
    """The API `name` of `service` if it is a plain one (no batching, context parameter, root
    or multipart input, *args or **kwargs), else None."""
    method = service.apis[name]
    spec = method.input_spec
    fields = tuple(spec.model_fields)
    plain = not (
        method.batchable
        or method.ctx_param is not None
        or getattr(spec, "__root_input__", False)
        or spec.multipart_fields
        or ARGS in fields
        or KWARGS in fields
        or not inspect.iscoroutinefunction(get_original_func(method.func))
    )
    return _PlainJsonApi(fields, spec, method.output_spec) if plain else None


async def _api_endpoint(self: ServiceAppFactory, name: str, request: Request) -> Response:
    """BentoML's `ServiceAppFactory.api_endpoint` for a JSON request to a plain API (every other
    goes to the original): the same parse, call and response, without the per-request imports,
    the `inspect` checks and the read of `model_fields` on an instance, which pydantic 2.11+
    answers through its deprecation warning machinery."""
    api = _plain_json_api(self.service, name)
    media_type = request.headers.get("content-type", "application/json")
    if api is None or media_type.split(";")[0].strip() != "application/json":
        return await _ORIGINAL_API_ENDPOINT(self, name, request)
    data = api.input_spec.model_validate_json(await request.body() or b"{}")
    output = await getattr(self._service_instance, name).local(
        **{field: getattr(data, field) for field in api.fields}
    )
    if isinstance(output, Response):
        return output
    return await api.output_spec.to_http_response(output, _JSON_SERDE)


def reuse_per_request_work() -> None:
    """Fix 8."""
    APIMethod._local_call = _local_call_once
    ServiceAppFactory._add_response_headers = _add_response_headers
    ServiceAppFactory.api_endpoint = _api_endpoint


# Fix 11: a body serialized whole is sent whole.
_ORIGINAL_ITERABLE_INIT = IterableResponse.__init__
_ORIGINAL_ITERABLE_CALL = IterableResponse.__call__


def _whole_body_init(
    self: IterableResponse,
    content: Iterable[bytes | memoryview],
    headers: dict[str, str] | None = None,
    media_type: str | None = None,
    status_code: int = 200,
    background: object = None,
) -> None:
    """BentoML's `IterableResponse`, but content given whole (a model serialized to JSON is a
    tuple of bytes) becomes a plain body, sent in one message."""
    whole = isinstance(content, tuple | list)
    if whole and all(isinstance(chunk, bytes | memoryview) for chunk in content):
        Response.__init__(self, b"".join(content), status_code, headers, media_type, background)
    else:
        _ORIGINAL_ITERABLE_INIT(self, content, headers, media_type, status_code, background)


async def _whole_body_call(self: IterableResponse, scope: Scope, receive: Receive, send: Send):
    if hasattr(self, "body_iterator"):
        return await _ORIGINAL_ITERABLE_CALL(self, scope, receive, send)
    return await Response.__call__(self, scope, receive, send)


def send_whole_bodies_whole() -> None:
    """Fix 11."""
    IterableResponse.__init__ = _whole_body_init
    IterableResponse.__call__ = _whole_body_call


# Fix 12: the labelled children of BentoML's request metrics, looked up once per endpoint.
_ORIGINAL_METRICS_CALL = instruments.RunnerTrafficMetricsMiddleware.__call__
ENDPOINTS_REMEMBERED = 1024  # paths come from clients: beyond this many, looked up per request


@attr.define
class _EndpointMetrics:
    """One endpoint's labelled metrics: the last request's time (None on a skipped path), the
    requests in progress, and per response status the count and the duration."""

    last_request: object | None
    in_progress: object
    by_status: dict[int, tuple[object, object]] = attr.field(factory=dict)


def _endpoint_metrics(self: instruments.RunnerTrafficMetricsMiddleware, endpoint: str):
    remembered = self.__dict__.setdefault("_gamerec_endpoints", {})
    found = remembered.get(endpoint)
    if found is None:
        names = _metric_names()
        skipped = endpoint.startswith(tuple(self.skip_paths))
        found = _EndpointMetrics(
            None if skipped else self.metrics_last_request_timestamp.labels(**names),
            self.metrics_request_in_progress.labels(endpoint=endpoint, **names),
        )
        if len(remembered) < ENDPOINTS_REMEMBERED:
            remembered[endpoint] = found
    return found


def _metric_names() -> dict[str, object]:
    return {
        "service_name": server_context.bento_name,
        "service_version": server_context.bento_version,
        "runner_name": server_context.service_name,
    }


async def _metrics_call(
    self: instruments.RunnerTrafficMetricsMiddleware, scope: Scope, receive: Receive, send: Send
) -> None:
    """BentoML's `RunnerTrafficMetricsMiddleware.__call__` for HTTP requests, the same metrics
    with the same labels and values, but each labelled child looked up once: the original calls
    `labels(**names)` four times a request (the whole middleware was about 4% of a request's CPU
    at one client, docs/performance.md, round 8). WebSockets and `/metrics` go to the
    original."""
    if scope["type"] != "http" or scope["path"] == "/metrics":
        return await _ORIGINAL_METRICS_CALL(self, scope, receive, send)
    if not self._is_setup:
        self._setup()
    endpoint = scope["path"]
    metrics = _endpoint_metrics(self, endpoint)
    if metrics.last_request is not None:
        metrics.last_request.set_to_current_time()
    start, status = default_timer(), 0

    async def measured_send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            counted = metrics.by_status.get(status)
            if counted is None:
                labels = {"endpoint": endpoint, "http_response_code": status, **_metric_names()}
                counted = (
                    self.metrics_request_total.labels(**labels),
                    self.metrics_request_duration.labels(**labels),
                )
                metrics.by_status[status] = counted
            counted[0].inc()
            counted[1].observe(max(default_timer() - start, 0))
        await send(message)

    with metrics.in_progress.track_inprogress():
        await self.app(scope, receive, measured_send)


def reuse_metric_labels() -> None:
    """Fix 12."""
    instruments.RunnerTrafficMetricsMiddleware.__call__ = _metrics_call


# Fix 9: deadlines and a cap for the connections of the worker's uvicorn.
def deadline_protocol(
    limits: ConnectionsConfig,
    admission: Admission | None = None,
    share: ConnectionShare | None = None,
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with `limits`: a request's headers must be whole within
    `header_timeout_s` of the connection's opening (its first request) or of the request's
    first byte, else 408 and close (a plain close if no byte came); an idle keep-alive
    connection closes after `keep_alive_s`; one beyond `max_connections` is closed at once.
    With `admission`, a request it does not admit gets its 503 from a bare ASGI app, outside
    BentoML's middlewares (the metrics, the access log, the timeout's task), and one it admits
    counts as in flight from its whole body on until its answer is sent (`InFlight`). With `share`
    (fix 10), a worker over its share of the server's connections answers a request with
    `Connection: close`."""

    refusal = _raw_response(admission.refusal) if admission is not None else b""

    class DeadlineProtocol(HttpToolsProtocol):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.timeout_keep_alive = limits.keep_alive_s
            self._header_deadline: asyncio.TimerHandle | None = None
            self._request_begun = False
            self._in_flight: InFlight | None = None  # the request whose body is arriving

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                transport.close()
                return
            if share is not None:
                share.connections_changed(len(self.connections))
            self._arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_deadline()
            super().connection_lost(exc)
            if share is not None:
                share.connections_changed(len(self.connections))

        def on_message_begin(self) -> None:  # the first byte of a request
            super().on_message_begin()
            self._request_begun = True

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # A request begun in this read whose headers did not come whole with it: its
            # deadline starts now (a request that arrived whole, the usual case, arms none).
            if self._request_begun and self._header_deadline is None:
                self._arm_header_deadline()

        def on_headers_complete(self) -> None:
            self._disarm_header_deadline()
            self._request_begun = False
            path = self.url.split(b"?", 1)[0].decode("latin-1")
            if admission is None or admission.admits(path):
                self._start_counted(path)
                # Not with requests pipelined behind this one: closing would drop them.
                mine = len(self.connections)
                if share is not None and not self.pipeline and share.should_close(mine):
                    self.cycle.keep_alive = False  # uvicorn adds Connection: close
                return
            if self.cycle is not None and not self.cycle.response_complete:
                served, self.app = self.app, admission.refusal  # pipelined: answer in turn
                try:
                    return super().on_headers_complete()
                finally:
                    self.app = served
            # Answered here, without a task: under overload this is most of the requests.
            self.cycle = _ANSWERED  # what the parser's body callbacks then see
            self.transport.write(refusal)
            if self.parser.should_keep_alive():
                self.on_response_complete()
            else:
                self.transport.close()

        def _start_counted(self, path: str) -> None:
            """uvicorn's start of the request, its app wrapped in `InFlight` if it counts, its
            response head held for its body (`_OneWrite`)."""
            before = self.cycle
            app = self.app
            if admission is not None and admission.limits(path):
                queued = before is not None and not before.response_complete
                app = InFlight(self.app, admission, queued)
            served, self.app = self.app, app
            try:
                super().on_headers_complete()
            finally:
                self.app = served
            if self.cycle is not before:  # else upgraded: no request of ours
                self.cycle.transport = _OneWrite(self.cycle.transport)
                if isinstance(app, InFlight):
                    self._in_flight = app

        def on_response_complete(self) -> None:
            if isinstance(getattr(self.cycle, "transport", None), _OneWrite):
                self.cycle.transport.flush()  # a response without body bytes (HEAD, 204)
            super().on_response_complete()

        def on_message_complete(self) -> None:  # the request's whole body is in
            super().on_message_complete()
            if self._in_flight is not None:
                self._in_flight.body_arrived()
                self._in_flight = None

        def _arm_header_deadline(self) -> None:
            self._disarm_header_deadline()
            self._header_deadline = self.loop.call_later(
                limits.header_timeout_s, self._headers_too_slow
            )

        def _disarm_header_deadline(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _headers_too_slow(self) -> None:
            self._header_deadline = None
            if self.transport.is_closing():
                return
            if self._request_begun:
                self.transport.write(_too_slow_response(limits.header_timeout_s))
            self.transport.close()

    return DeadlineProtocol


class _OneWrite:
    """Fix 13: a request/response cycle's transport that holds the response head until the
    first bytes of its body, and writes both at once. uvicorn's httptools protocol writes the
    head on `http.response.start` and the body on `http.response.body`: two writes, two TCP
    segments (its sockets set TCP_NODELAY), two wake-ups of the client; one write is 1-2% of a
    request's CPU at one client (docs/performance.md, round 8). Any other use of the transport
    (close, is_closing, a 100 Continue) writes what it holds first."""

    __slots__ = ("head", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport, self.head = transport, b""

    def write(self, data: bytes) -> None:
        if not self.head and data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 1"):
            self.head = data  # a final response's status line and headers
            return
        if self.head:
            data, self.head = self.head + data, b""
        self.transport.write(data)

    def flush(self) -> None:
        if self.head:
            head, self.head = self.head, b""
            self.transport.write(head)

    def __getattr__(self, name: str) -> object:
        self.flush()
        return getattr(self.transport, name)


class _Answered:
    """Stands for the request/response cycle of a request answered by the protocol itself."""

    response_complete, disconnected = True, False
    message_event = SimpleNamespace(set=lambda: None)


_ANSWERED = _Answered()


def _raw_response(response: Response) -> bytes:
    """A whole HTTP/1.1 response, as bytes, of a rendered Starlette response."""
    head = b"".join(name + b": " + value + b"\r\n" for name, value in response.raw_headers)
    return STATUS_LINE[response.status_code] + head + b"\r\n" + response.body


def _too_slow_response(seconds: float) -> bytes:
    body = json.dumps({"error": f"the request headers did not arrive within {seconds:g} s"})
    return b"".join([
        STATUS_LINE[408],
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n\r\n",
        body.encode(),
    ])  # fmt: skip


_ORIGINAL_UVICORN_CONFIG_INIT = uvicorn.Config.__init__


def serve_with_connection_limits(
    limits: ConnectionsConfig, admission: Admission, entry_workers: int = 1
) -> None:
    """Fixes 9 and 10: the uvicorn of this worker (its `Config`, built by BentoML after the
    service is imported) serves with `deadline_protocol`, unless told another protocol. In
    an entry worker of a server with `entry_workers` of them, admission counts the server's
    requests and the connections are balanced (fix 10), through `WorkerCounts`."""

    def config_init(self: uvicorn.Config, *args, **kwargs) -> None:
        kwargs.setdefault("http", _protocol_of_this_worker(limits, admission, entry_workers))
        _ORIGINAL_UVICORN_CONFIG_INIT(self, *args, **kwargs)

    uvicorn.Config.__init__ = config_init


def _protocol_of_this_worker(
    limits: ConnectionsConfig, admission: Admission, entry_workers: int
) -> type[HttpToolsProtocol]:
    # BentoML names the worker's service after importing it, before building uvicorn's Config:
    # only now is it known whether this is an entry worker (the Embedder shares no counts).
    share = None
    if entry_workers > 1 and server_context.service_type == "entry_service":
        counts = WorkerCounts.of_this_worker()
        admission.share_with(counts)
        if limits.balance_interval_s > 0:
            share = ConnectionShare(counts, entry_workers, limits.balance_interval_s)
    return deadline_protocol(limits, admission, share)
