"""What the HTTP API speaks: request and response models, and the response shaping.

`service.py` wires these to BentoML; the model work itself is `training.recommender`.
"""

from __future__ import annotations

import hmac
import json
import os
from dataclasses import dataclass
from typing import Annotated

import attr
import numpy as np
import pandas as pd
from _bentoml_sdk.service.factory import Service
from bentoml._internal.service.openapi.specification import OpenAPISpecification, Schema
from bentoml._internal.service.openapi.utils import exception_components_schema
from fastapi.security import HTTPBearer
from prometheus_client import Histogram
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from training.config import load_service_config
from training.features import EncodedUser, UserRecord
from training.recommender import ModelVersions, Ranked, Recommender
from training.schema import normalize_label
from training.store import ModelArtifacts

LIMITS = load_service_config().limits
ADMIN_TOKEN_ENV = "GAMEREC_ADMIN_TOKEN"
# In /metrics next to BentoML's own: how well the entry service coalesces its Embedder calls.
EMBEDDER_CALL_QUERIES = Histogram(
    "gamerec_embedder_call_queries",
    "User queries per call of the entry service to the Embedder (coalesced, training/coalesce.py)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)

Id = Annotated[str, StringConstraints(min_length=1, max_length=LIMITS.max_id_length)]
Minutes = Annotated[float, Field(ge=0, le=LIMITS.max_minutes, allow_inf_nan=False, strict=True)]


def _whole_number(value: object) -> object:
    """2.0 is the integer 2, as JSON Schema has it; a string or a fraction is still refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# The validator after the constraints: before them, pydantic writes them into the schema as
# "ge"/"le", which JSON Schema does not know.
WholeNumber = Annotated[int, Field(strict=True), BeforeValidator(_whole_number)]
Count = Annotated[int, Field(ge=0, le=2**31 - 1, strict=True), BeforeValidator(_whole_number)]


class RecommendRequest(BaseModel):
    """The body clients send to `POST /recommend`, as it is."""

    model_config = ConfigDict(extra="forbid")

    user_id: Id = Field(examples=["u_123"])
    time_played: dict[Id, Minutes] = Field(
        default_factory=dict,
        max_length=LIMITS.max_history,
        description="minutes played per game id",
        examples=[{"g_221": 120.0}],
    )
    genres: list[Id] = Field(
        default_factory=list,
        max_length=LIMITS.max_genres,
        description="preferred genres",
        examples=[["rpg", "roguelike"]],
    )
    achievements: dict[Id, Count] = Field(
        default_factory=dict, max_length=LIMITS.max_history, examples=[{"g_221": 15}]
    )
    top_k: WholeNumber = Field(10, ge=1, le=LIMITS.max_top_k)
    only_genres: list[Id] = Field(
        default_factory=list,
        max_length=LIMITS.max_genres,
        description="recommend only games of these genres",
    )
    exclude_games: list[Id] = Field(
        default_factory=list,
        max_length=LIMITS.max_history,
        description="never recommend these game ids",
    )

    def record(self) -> UserRecord:
        return UserRecord(
            time_played=dict(self.time_played),
            achievements=dict(self.achievements),
            genres=list(self.genres),
        )


class Game(BaseModel):
    game_id: str
    title: str
    genres: list[str]


class Recommendation(Game):
    score: float
    because_you_played: str | None = Field(
        None, description="the played game most similar to this one"
    )


class RecommendResponse(BaseModel):
    user_id: str
    model: str
    cold_start: bool = Field(description="no known played game: popular games, genre-aware")
    recommendations: list[Recommendation]
    unknown_games: list[str] = Field(description="game ids the model does not know (ignored)")
    unknown_genres: list[str]


class UserQuery(BaseModel):
    """One user's features as the batched service takes them, and the model that encoded them."""

    model: str = Field(description="the model tag whose vocabulary made these positions")
    games: list[int]
    game_weights: list[float]
    achievement_weights: list[float]
    genres: list[int]
    dense: list[float]
    exclude: list[int]
    k: int

    @classmethod
    def from_encoded(cls, user: EncodedUser, exclude: set[int], k: int, model: str) -> UserQuery:
        return cls(
            model=model,
            games=user.games.tolist(),
            game_weights=user.game_weights.tolist(),
            achievement_weights=user.achievement_weights.tolist(),
            genres=user.genres.tolist(),
            dense=user.dense.tolist(),
            exclude=sorted(exclude),
            k=k,
        )

    def encoded(self) -> EncodedUser:
        return EncodedUser(
            games=np.asarray(self.games, np.int64),
            game_weights=np.asarray(self.game_weights, np.float32),
            achievement_weights=np.asarray(self.achievement_weights, np.float32),
            genres=np.asarray(self.genres, np.int64),
            dense=np.asarray(self.dense, np.float32),
        )


class RankedGames(BaseModel):
    games: list[int]
    scores: list[float]


def rank_queries(versions: ModelVersions, queries: list[UserQuery]) -> list[RankedGames]:
    """One batched search per model version among the queries; answers in query order."""
    ranked: dict[int, Ranked] = {}
    for tag in dict.fromkeys(q.model for q in queries):
        batch = [i for i, q in enumerate(queries) if q.model == tag]
        found = versions.get(tag).top_k(
            [queries[i].encoded() for i in batch],
            max(queries[i].k for i in batch),
            [set(queries[i].exclude) for i in batch],
        )
        ranked.update(zip(batch, found, strict=True))
    return [
        RankedGames(games=ranked[i].games[: q.k].tolist(), scores=ranked[i].scores[: q.k].tolist())
        for i, q in enumerate(queries)
    ]


@dataclass
class Catalog:
    """Catalog lookups for responses: titles, genres, popularity, similar games."""

    artifacts: ModelArtifacts

    def __post_init__(self) -> None:
        games = self.artifacts.catalog
        self.ids: list[str] = games["game_id"].astype(str).tolist()
        self.titles: list[str] = games["title"].astype(str).tolist()
        self.genres: list[list[str]] = [list(g) for g in games["genres"]]
        self.popularity = games["popularity"].to_numpy(np.float64)
        self.by_popularity = np.argsort(-self.popularity, kind="stable")
        self.lower_titles = pd.Series(self.titles).str.lower()
        self.games_of_genre: dict[str, list[int]] = {}
        for position, genres in enumerate(self.genres):
            for genre in genres:
                self.games_of_genre.setdefault(genre, []).append(position)

    def game(self, position: int) -> Game:
        return Game(
            game_id=self.ids[position], title=self.titles[position], genres=self.genres[position]
        )

    def outside_genres(self, genres: list[str]) -> set[int]:
        """Positions of games with none of these genres (for the `only_genres` filter)."""
        wanted = {normalize_label(g) for g in genres}
        return set(np.flatnonzero(~self.has_genre(wanted)).tolist())

    def positions(self, game_ids: list[str]) -> set[int]:
        index = self.artifacts.vocab.game_index
        return {index[g] for g in game_ids if g in index}

    def popular(self, k: int, exclude: set[int], genres: list[str]) -> Ranked:
        """Cold start: the most played games, those of the preferred genres first."""
        order = self.by_popularity
        if exclude:
            order = order[~np.isin(order, list(exclude))]
        wanted = {normalize_label(g) for g in genres}
        if wanted:
            match = self.has_genre(wanted)[order]
            order = np.concatenate([order[match], order[~match]])  # each part by popularity
        picked = order[:k]
        top = self.popularity.max() or 1.0
        return Ranked(
            games=picked.astype(np.int64), scores=(self.popularity[picked] / top).astype(np.float32)
        )

    def has_genre(self, genres: set[str]) -> np.ndarray:
        """Per game, whether it has any of these genres."""
        mask = np.zeros(len(self.ids), bool)
        for genre in genres:
            mask[self.games_of_genre.get(genre, [])] = True
        return mask

    def because_you_played(self, recommended: np.ndarray, played: np.ndarray) -> list[str | None]:
        """For each recommended game, the played game whose embedding is closest to it."""
        if len(played) == 0 or len(recommended) == 0:
            return [None] * len(recommended)
        emb = self.artifacts.item_embeddings
        closest = np.argmax(emb[recommended] @ emb[played].T, axis=1)
        return [self.ids[played[c]] for c in closest]

    def search(self, query: str, limit: int, offset: int) -> tuple[int, list[Game]]:
        hits = np.flatnonzero(self.lower_titles.str.contains(query.lower(), regex=False).to_numpy())
        hits = hits[np.argsort(-self.popularity[hits], kind="stable")]
        return len(hits), [self.game(int(i)) for i in hits[offset : offset + limit]]


@dataclass(frozen=True)
class ServedModel:
    """The model version the entry service answers with; a reload replaces the whole object."""

    recommender: Recommender
    catalog: Catalog

    @classmethod
    def of(cls, recommender: Recommender) -> ServedModel:
        return cls(recommender, Catalog(recommender.artifacts))

    @property
    def tag(self) -> str:
        return self.recommender.artifacts.tag


def shape_response(
    request: RecommendRequest,
    user: EncodedUser,
    ranked: Ranked,
    cold_start: bool,
    catalog: Catalog,
    model_tag: str,
) -> RecommendResponse:
    reasons = catalog.because_you_played(ranked.games, user.games)
    # Python ints and floats first: iterating numpy arrays yields slow numpy scalars.
    recommendations = [
        Recommendation(
            game_id=catalog.ids[g],
            title=catalog.titles[g],
            genres=catalog.genres[g],
            score=score,
            because_you_played=reason,
        )
        for g, score, reason in zip(
            ranked.games.tolist(), ranked.scores.tolist(), reasons, strict=True
        )
    ]
    return RecommendResponse(
        user_id=request.user_id,
        model=model_tag,
        cold_start=cold_start,
        recommendations=recommendations,
        unknown_games=list(user.unknown_games),
        unknown_genres=list(user.unknown_genres),
    )


# ---------------------------------------------------------------- hostile input


class ErrorMessage(BaseModel):
    error: str


GUARD_RESPONSES = {  # what `RequestGuard` answers for any POST
    413: "the body is over `limits.max_body_bytes`",
    415: "the body is not `Content-Type: application/json`",
}


class RequestGuard:
    """ASGI middleware: what no endpoint should have to parse, answered before any does.

    - `/admin/...` without the admin token gets 401 (403 while no token is set), see
      `admin_refusal`;
    - a body over `max_bytes` gets 413, unread if its Content-Length says so, else as soon as
      the bytes read pass the limit (a chunked body);
    - a POST body that is not `Content-Type: application/json` gets 415;
    - a JSON object with a repeated key gets 400 naming the key (parsers disagree on which of
      the two values wins, so neither is guessed).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        refusal = self._before_body(scope, headers)
        if refusal is None and scope["method"] == "POST":
            body = await _read_body(receive, self.max_bytes)
            if body is None:
                refusal = 413, self._too_large()
            else:
                refusal, receive = _body_refusal(body, headers), _replay(body, receive)
        if refusal is None:
            return await self.app(scope, receive, send)
        status, message = refusal
        challenge = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        response = JSONResponse({"error": message}, status_code=status, headers=challenge)
        await response(scope, receive, send)

    def _before_body(self, scope: Scope, headers: Headers) -> tuple[int, str] | None:
        if scope["path"].startswith(ADMIN_PATH):
            refusal = admin_refusal(headers.get("authorization", ""))
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


def _no_repeats(pairs: list[tuple[str, object]]) -> None:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)


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


def correct_openapi_spec() -> None:
    """Make BentoML 1.4.40's OpenAPI spec (`/docs.json`) say what this API does.

    - It is labelled OpenAPI 3.0.2, but its schemas are pydantic's and FastAPI's JSON Schema
      2020-12, i.e. OpenAPI 3.1 (`propertyNames`, `"type": "null"`): relabelled 3.1.0.
    - The request body of a `@bentoml.api` endpoint is required (without one: 400), not optional.
    - A body that fails validation gets 400 with `detail`: the list of pydantic errors, where the
      spec's `InvalidArgument` says a string.
    - `RequestGuard`'s 413 and 415 are added.
    """
    generate = Service.openapi_spec.fget
    error = {"application/json": {"schema": ErrorMessage.model_json_schema()}}
    guard = {s: {"description": d, "content": error} for s, d in GUARD_RESPONSES.items()}

    def corrected(service: Service) -> OpenAPISpecification:
        spec = generate(service)
        for item in spec.paths.values():
            if isinstance(item.post, dict) and "x-bentoml-name" in item.post:
                item.post["requestBody"]["required"] = True
                item.post["responses"] = {**item.post["responses"], **guard}
        return attr.evolve(spec, openapi="3.1.0")

    Service.openapi_spec = property(corrected)
    invalid = exception_components_schema()["InvalidArgument"]
    assert invalid.properties is not None
    invalid.properties["detail"] = Schema(
        title="Error Detail",
        anyOf=[Schema(type="string"), Schema(type="array", items=Schema(type="object"))],
    )


# ---------------------------------------------------------------- admin


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tag: Id | None = Field(
        None,
        description="model to serve, e.g. gamerec:<version>; default: the configured tag, "
        "resolved now (the newest model for gamerec:latest)",
    )


class ReloadResponse(BaseModel):
    model: str = Field(description="the model tag served from now on")
    previous: str


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


def admin_refusal(authorization: str) -> tuple[int, str] | None:
    """None if `authorization` is `Bearer <$GAMEREC_ADMIN_TOKEN>` (compared in constant time),
    else (403, why) while no token is set, or (401, why)."""
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    if not token:
        return 403, f"admin endpoints are disabled: set {ADMIN_TOKEN_ENV}"
    scheme, _, supplied = authorization.partition(" ")
    # Starlette decodes header bytes as latin-1: encoding back gives the bytes as sent.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        supplied.strip().encode("latin-1"), token.encode()
    ):
        return 401, "missing or wrong admin token: send Authorization: Bearer <token>"
    return None
