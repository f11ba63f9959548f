"""The dashboard's only way to the service: small HTTP calls that fail with one clear error."""

from __future__ import annotations

from typing import Any

import httpx

TIMEOUT_SECONDS = 10.0

JSON = dict[str, Any]


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
        try:
            response = httpx.request(method, url, timeout=self.timeout, **kwargs)
        except httpx.TimeoutException as error:
            raise ServiceError(
                f"The GameRec service at {self.base_url} did not answer within "
                f"{self.timeout:g} s ({type(error).__name__})."
            ) from error
        except httpx.HTTPError as error:
            raise ServiceError(
                f"The GameRec service at {self.base_url} is not reachable ({error}). "
                "Is it running? Start it with `make serve`."
            ) from error
        if response.status_code >= 400:
            raise ServiceError(_describe(response), status=response.status_code)
        try:
            return response.json()
        except ValueError as error:
            raise ServiceError(f"{method} {path} answered with no JSON.") from error


def _describe(response: httpx.Response) -> str:
    """`GET /similar answered 404: game_id 'x' is not in the catalog`, from the error body."""
    request = response.request
    where = f"{request.method} {request.url.path} answered {response.status_code}"
    try:
        body = response.json()
    except ValueError:
        return f"{where}: {response.text[:200] or response.reason_phrase}"
    if not isinstance(body, dict):
        return f"{where}: {body}"
    details = [_detail(d) for d in body.get("detail") or []]
    return "; ".join([f"{where}: {body.get('error', response.reason_phrase)}", *details])


def _detail(item: object) -> str:
    """One validation error: `top_k: Input should be less than or equal to 100`."""
    if not isinstance(item, dict):
        return str(item)
    where = ".".join(str(part) for part in item.get("loc", []))
    return f"{where}: {item.get('msg', item)}" if where else str(item.get("msg", item))
