"""Fixes for BentoML 1.4.40, applied by `service.py` (each measured; see docs/performance.md).

1. Connection recycling (BentoML issue 5540): the `bentoml.depends()` client closes its whole
   connection pool every `max_requests` calls while other requests still use it, so they fail
   with "Cannot write to closing transport". `NO_RECYCLING` switches recycling off for the
   dependency (`runner_connection` is read by the caller's client); over the local unix socket
   there is nothing to balance, so recycling buys nothing.
2. Tail latency: `TimeoutMiddleware` schedules a timer per request and never cancels it, so
   every request's objects live for `traffic.timeout` seconds; the heap grows and full garbage
   collections stall a worker for 100-300 ms. `patch_timeout_middleware` cancels the timer, and
   `freeze_startup_objects` moves the objects made at start-up out of the collector's way. The
   patched middleware also returns as soon as the handler ends, even without a response (the
   original then waited for the whole timeout).
3. Per-response JSON schema: `IOMixin.mime_type()` builds the output model's whole JSON schema
   (pydantic `TypeAdapter.json_schema`) for every response, only to learn that the answer is
   JSON. `cache_media_types` computes it once per API at import.
4. The hop between the services: the inner service is reached only by the entry service over
   a local socket, so `INNER_SERVICE` switches off what is per request and is already done by
   the entry service: the access log, the Prometheus metrics and the tracing middleware's spans.
5. Spans nobody reads: BentoML's OpenTelemetry middleware builds a span context for every
   request even when no exporter is configured (BentoML's default) and nothing is sampled. On
   the entry service that was about a quarter of its CPU per recommendation;
   `untraced_routes_config` excludes the hot routes unless `trace_recommend` says otherwise.
"""

from __future__ import annotations

import asyncio
import gc
import re

from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

NO_RECYCLING = {"max_requests": 2**31 - 1, "max_age": 1e9}


def inner_service_config(*routes: str) -> dict:
    """`@bentoml.service` settings of a service that only the entry service calls (fix 4)."""
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


def cache_media_types(*services: object) -> None:
    """Fix 3: each API's response media type, computed once instead of per response."""
    for service in services:
        for api in service.apis.values():
            api.output_spec.media_type = api.output_spec.mime_type()


async def _timeout_middleware_call(
    self: traffic.TimeoutMiddleware, scope: Scope, receive: Receive, send: Send
) -> None:
    """BentoML's own `TimeoutMiddleware.__call__`, with the timer cancelled once it has served."""
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def started(message: dict) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    handler = asyncio.ensure_future(self.app(scope, receive, started))
    try:
        # The handler may also end without sending anything (an exception): then it is done.
        await asyncio.wait({waiter, handler}, return_when=asyncio.FIRST_COMPLETED)
        if not handler.done() and waiter.exception() is not None and handler.cancel():
            message = f"Not able to process the request in {self.timeout} seconds"
            await JSONResponse({"error": message}, status_code=504)(scope, receive, send)
        else:
            await handler
    finally:
        timer.cancel()


def patch_timeout_middleware() -> None:
    traffic.TimeoutMiddleware.__call__ = _timeout_middleware_call


def freeze_startup_objects() -> None:
    """Call at the end of a worker's `__init__`: start-up objects are never garbage."""
    gc.collect()
    gc.freeze()
