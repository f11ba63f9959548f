"""The request guard: what no endpoint should have to parse, answered before any does; the
body deadline (408); the admission limit (503 beyond it, applied by the worker's protocol);
and the admin endpoints' bearer-token check."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time

from fastapi.security import HTTPBearer
from prometheus_client import Counter
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.balance import IN_FLIGHT, WorkerCounts

ADMIN_TOKEN_ENV = "GAMEREC_ADMIN_TOKEN"  # read in serving/settings.py; named in messages


class ErrorMessage(BaseModel):
    """The body of every error the guard and the service's own routes answer."""

    error: str


GUARD_RESPONSES = {  # what `RequestGuard` answers for any POST
    408: "the body did not arrive within `connections.body_timeout_s`",
    413: "the body is over `limits.max_body_bytes`",
    415: "the body is not `Content-Type: application/json`",
    503: "over `admission.max_in_flight` requests in the server: retry after `Retry-After` s",
}
# Probes and metrics are never refused: a worker busy at its limit is still alive and ready.
UNLIMITED_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/metrics"})
SHED_LOG_INTERVAL_S = 10.0  # refusals are logged as a count at most this often, not one by one
logger = logging.getLogger(__name__)
# In /metrics: the refusals are answered before BentoML's request metrics see them.
REFUSED = Counter(
    "gamerec_refused_requests",
    "Requests refused with 503: over admission.max_in_flight in flight in the server",
)


class Admission:
    """The requests the server is answering, and its limit: beyond it, a request gets 503 with
    `Retry-After` at once. Each worker counts its own and, with `WorkerCounts` shared
    (serving/balance.py), reads the others'. The worker's HTTP protocol (fix 9 of
    serving/bentoml_fixes.py) both refuses and counts, before BentoML's middlewares see the
    request: under overload those are most of the cost of a refusal (measured in
    docs/overload.md), and a count kept inside the app lags the protocol's decisions (every
    request read in one turn of the event loop was admitted against the same count)."""

    def __init__(
        self, max_in_flight: int, retry_after_s: int, inner_routes: tuple[str, ...] = ()
    ) -> None:
        self.max_in_flight, self.in_flight = max_in_flight, 0  # in_flight: this worker's
        self.workers: WorkerCounts | None = None  # the server's other workers, once shared
        # The Embedder's routes (its process imports the same module): only the entry workers
        # call them, each with at most `embedder.max_calls_in_flight` calls out.
        self.unlimited = UNLIMITED_PATHS | set(inner_routes)
        self.refused, self._logged_refused, self._logged_at = 0, 0, time.monotonic()
        message = (
            f"overloaded: the server is answering {max_in_flight} requests already; "
            f"retry after {retry_after_s} s"
        )
        # Rendered once: it is answered in bulk under overload.
        self.refusal = JSONResponse(
            {"error": message}, status_code=503, headers={"Retry-After": str(retry_after_s)}
        )

    def limits(self, path: str) -> bool:
        """Whether requests for `path` count and may be refused: not probes and metrics (a
        worker at its limit is alive and ready), not `/admin/...` (an operator may need a
        reload most under overload), not the Embedder's routes."""
        return path not in self.unlimited and not path.startswith(ADMIN_PATH)

    def share_with(self, workers: WorkerCounts) -> None:
        """Count against the server's limit: this worker's requests and its other workers'."""
        self.workers = workers
        workers.publish(IN_FLIGHT, self.in_flight)

    def add(self, change: int) -> None:
        self.in_flight += change
        if self.workers is not None:
            self.workers.publish(IN_FLIGHT, self.in_flight)

    def admits(self, path: str) -> bool:
        """Whether a request for `path` may go on; a refusal is counted (and logged in bulk).
        Two workers may admit the last slot at once: the limit is held to within a request."""
        if not self.limits(path):
            return True
        others = self.workers.others(IN_FLIGHT) if self.workers is not None else 0
        if self.in_flight + others < self.max_in_flight:
            return True
        self.refused += 1
        REFUSED.inc()
        now = time.monotonic()
        if now - self._logged_at >= SHED_LOG_INTERVAL_S:
            logger.warning(
                "overloaded: %d requests refused with 503 in the last %.0f s (admission."
                "max_in_flight %d)", self.refused - self._logged_refused, now - self._logged_at,
                self.max_in_flight,
            )  # fmt: skip
            self._logged_refused, self._logged_at = self.refused, now
        return False


class InFlight:
    """One admitted request's ASGI app, counted in `admission` from its whole body on (a client
    trickling its body holds no slot) until its response is sent (or its app returns without
    one). A request queued behind another on its connection (HTTP pipelining) counts from its
    start, so that one never started (its connection lost first) is never counted."""

    def __init__(self, app: ASGIApp, admission: Admission, queued: bool) -> None:
        self.app, self.admission = app, admission
        self.body_whole = self.counted = self.finished = False
        self.started = not queued

    def body_arrived(self) -> None:
        self.body_whole = True
        self._count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.started = True
        self._count()

        async def sending(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self._finish()  # the client may send its next request now: this one is done

        try:
            await self.app(scope, receive, sending)
        finally:
            self._finish()

    def _count(self) -> None:
        if self.body_whole and self.started and not (self.counted or self.finished):
            self.counted = True
            self.admission.add(1)

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            if self.counted:
                self.admission.add(-1)


class RequestGuard:
    """ASGI middleware: what no endpoint should have to parse, answered before any does.

    - `/admin/...` without the admin token gets 401 (403 while no token is set), see
      `admin_refusal`;
    - a body that has not arrived whole `body_timeout_s` after its headers gets 408 and the
      connection is closed (a client trickling its body holds no admission slot meanwhile:
      a request counts as in flight from its whole body on, see `InFlight`);
    - a body over `max_bytes` gets 413, unread if its Content-Length says so, else as soon as
      the bytes read pass the limit (a chunked body);
    - a POST body that is not `Content-Type: application/json` gets 415;
    - a JSON object with a repeated key gets 400 naming the key (parsers disagree on which of
      the two values wins, so neither is guessed).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        admin_token: str,
        body_timeout_s: float,
    ) -> None:
        self.app, self.max_bytes, self.admin_token = app, max_bytes, admin_token
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        refusal = self._before_body(scope, headers)
        if refusal is None and scope["method"] == "POST":
            refusal, receive = await self._read_checked_body(headers, receive)
        if refusal is None:
            return await self.app(scope, receive, send)
        status, message = refusal
        extra = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if status == 408:
            extra = {"Connection": "close"}  # the rest of the body may still be on its way
        response = JSONResponse({"error": message}, status_code=status, headers=extra)
        await response(scope, receive, send)

    async def _read_checked_body(
        self, headers: Headers, receive: Receive
    ) -> tuple[tuple[int, str] | None, Receive]:
        """(refusal or None, the `receive` the app is to read the body from)."""
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await _read_body(receive, self.max_bytes)
        except TimeoutError:
            late = f"the request body did not arrive within {self.body_timeout_s:g} s"
            return (408, late), receive
        if body is None:
            return (413, self._too_large()), receive
        return _body_refusal(body, headers), _replay(body, receive)

    def _before_body(self, scope: Scope, headers: Headers) -> tuple[int, str] | None:
        if scope["path"].startswith(ADMIN_PATH):
            refusal = admin_refusal(headers.get("authorization", ""), self.admin_token)
            if refusal is not None:
                return refusal
        declared = headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            return 413, f"{self._too_large()} (Content-Length: {declared[:40]})"
        return None

    def _too_large(self) -> str:
        return f"request body over the limit of {self.max_bytes} bytes"


def _body_refusal(body: bytes, headers: Headers) -> tuple[int, str] | None:
    """(status, message) for a POST body no endpoint should see, else None."""
    content_type = headers.get("content-type", "")
    if body and content_type.split(";")[0].strip().lower() != "application/json":
        return 415, (
            "the body must be JSON: expected Content-Type: application/json, "
            f"got {content_type[:80] or 'none'}"
        )
    key = duplicate_key(body)
    if key is not None:
        return 400, f"duplicate key {key[:80]!r} in a JSON object: send each key once"
    return None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it is over `limit` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then whatever comes next."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


class _DuplicateKey(Exception):
    pass


def _no_repeats(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """The object, as `json.loads` makes it; a repeated key raises `_DuplicateKey`. The dict is
    built in C, the keys walked in Python only when there is a repeat to name."""
    parsed = dict(pairs)
    if len(parsed) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return parsed


def duplicate_key(body: bytes) -> str | None:
    """The first key repeated within one object of a JSON body; None for a body without one,
    and for a body that is not JSON at all (the endpoint's own parser names that problem)."""
    try:
        json.loads(body, object_pairs_hook=_no_repeats)
    except _DuplicateKey as repeated:
        return str(repeated.args[0])
    except (ValueError, RecursionError):
        return None
    return None


ADMIN_PATH = "/admin/"
ADMIN_RESPONSES: dict[int | str, dict] = {
    status: {"model": ErrorMessage, "description": description}
    for status, description in {
        400: "the model was refused: a part is broken or the parts disagree",
        401: "missing or wrong token",
        403: f"admin endpoints are disabled: {ADMIN_TOKEN_ENV} is not set",
        404: "no such model in the store",
        **GUARD_RESPONSES,
    }.items()
}
# Declares the scheme in the OpenAPI spec; `RequestGuard` enforces it, before any body is read.
ADMIN_BEARER = HTTPBearer(auto_error=False, description=f"the token in {ADMIN_TOKEN_ENV}")


def admin_refusal(authorization: str, token: str) -> tuple[int, str] | None:
    """None if `authorization` is `Bearer <token>` (compared in constant time), else (403, why)
    while no token is set, or (401, why)."""
    if not token:
        return 403, f"admin endpoints are disabled: set {ADMIN_TOKEN_ENV}"
    scheme, _, supplied = authorization.partition(" ")
    # Starlette decodes header bytes as latin-1: encoding back gives the bytes as sent.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        supplied.strip().encode("latin-1"), token.encode()
    ):
        return 401, "missing or wrong admin token: send Authorization: Bearer <token>"
    return None
