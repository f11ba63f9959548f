"""The dashboard's only way to the service: small HTTP calls that fail with one clear error.

An error message never quotes what the upstream sent, except the short `error` and validation
messages of a body in GameRec's own error shape: the page shows it to any visitor. The raw body
goes to the server-side log only.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Annotated, Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

TIMEOUT_SECONDS = 10.0
MAX_TEXT = 200  # characters of one upstream message shown, or none of it
MAX_DETAILS = 5  # validation errors shown
LOGGED_BODY = 1000  # characters of an error body logged

JSON = dict[str, Any]
ShortText = Annotated[str, StringConstraints(max_length=MAX_TEXT)]

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """The service is down, too slow, or refused the request; the message says which."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class GameRecClient:
    """Calls of the GameRec HTTP API; each returns the decoded JSON answer."""

    def __init__(self, base_url: str, timeout: float = TIMEOUT_SECONDS) -> None:
        self.base_url = base_url.strip().rstrip("/")
        self.timeout = timeout

    def info(self) -> JSON:
        return self._call("GET", "/info")

    def games(self, query: str = "", limit: int = 20, offset: int = 0) -> JSON:
        params = {"query": query, "limit": limit, "offset": offset}
        return self._call("GET", "/games", params=params)

    def similar(self, game_id: str, top_k: int = 10) -> JSON:
        return self._call("GET", "/similar", params={"game_id": game_id, "top_k": top_k})

    def recommend(self, body: JSON) -> JSON:
        return self._call("POST", "/recommend", json=body)

    def _call(self, method: str, path: str, **kwargs: Any) -> JSON:
        url = f"{self.base_url}{path}"
        try:  # no redirects: the configured host is the only one asked
            response = httpx.request(
                method, url, timeout=self.timeout, follow_redirects=False, **kwargs
            )
        except httpx.TimeoutException as error:
            raise ServiceError(
                f"The GameRec service at {self.base_url} did not answer within "
                f"{self.timeout:g} s ({type(error).__name__})."
            ) from error
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            raise ServiceError(
                f"The GameRec service at {self.base_url} is not reachable ({error}). "
                "Is it running? Start it with `make serve`."
            ) from error
        if response.status_code >= 400:
            log.warning("%s %s answered %d: %r", method, url, response.status_code, _head(response))
            raise ServiceError(error_message(response), status=response.status_code)
        try:
            return response.json()
        except ValueError as error:
            raise ServiceError(f"{method} {path} answered with no JSON.") from error


class FieldError(BaseModel):
    """One validation error of BentoML's 400 or FastAPI's 422 (other keys ignored)."""

    loc: list[ShortText | int] = []
    msg: ShortText


class ErrorBody(BaseModel):
    """GameRec's error body: `{"error": ...}`, validation errors in `detail`; nothing else."""

    model_config = ConfigDict(extra="forbid")

    error: ShortText | None = None
    detail: list[FieldError] = Field(default_factory=list)


def error_message(response: httpx.Response) -> str:
    """`GET /similar answered 404: game_id 'x' is not in the catalog`: the status, and the
    messages of a GameRec error body; of any other body, only the status's standard phrase."""
    request = response.request
    where = f"{request.method} {request.url.path} answered {response.status_code}"
    try:
        body = ErrorBody.model_validate_json(response.content)
    except ValidationError:
        return f"{where}: {_phrase(response.status_code)}"
    details = [_detail(item) for item in body.detail[:MAX_DETAILS]]
    if len(body.detail) > MAX_DETAILS:
        details.append(f"and {len(body.detail) - MAX_DETAILS} more")
    first = _plain(body.error) if body.error else _phrase(response.status_code)
    return "; ".join([f"{where}: {first}", *details])


def _detail(item: FieldError) -> str:
    """One validation error: `top_k: Input should be less than or equal to 100`."""
    where = ".".join(str(part) for part in item.loc)
    return _plain(f"{where}: {item.msg}" if where else item.msg)


def _phrase(status: int) -> str:
    """The standard reason phrase, not the upstream's own (which could say anything)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


def _plain(text: str) -> str:
    """One line of printable characters."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _head(response: httpx.Response) -> str:
    return response.content[:LOGGED_BODY].decode("utf-8", errors="replace")
