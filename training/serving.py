"""What the HTTP API speaks: request and response models, and the response shaping.

`service.py` wires these to BentoML; the model work itself is `training.recommender`.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Annotated

import numpy as np
import pandas as pd
from bentoml.exceptions import BentoMLException
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from training.config import load_service_config
from training.features import EncodedUser, UserRecord
from training.recommender import Ranked
from training.schema import normalize_label
from training.store import ModelArtifacts

LIMITS = load_service_config().limits

Id = Annotated[str, StringConstraints(min_length=1, max_length=LIMITS.max_id_length)]
Minutes = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]
Count = Annotated[int, Field(ge=0, le=2**31 - 1, strict=True)]


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
    top_k: int = Field(10, ge=1, le=LIMITS.max_top_k, strict=True)
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
    """One user's features as the batched service takes them."""

    games: list[int]
    game_weights: list[float]
    achievement_weights: list[float]
    genres: list[int]
    dense: list[float]
    exclude: list[int]
    k: int

    @classmethod
    def from_encoded(cls, user: EncodedUser, exclude: set[int], k: int) -> UserQuery:
        return cls(
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

    def game(self, position: int) -> Game:
        return Game(
            game_id=self.ids[position], title=self.titles[position], genres=self.genres[position]
        )

    def outside_genres(self, genres: list[str]) -> set[int]:
        """Positions of games with none of these genres (for the `only_genres` filter)."""
        wanted = {normalize_label(g) for g in genres}
        return {i for i, gs in enumerate(self.genres) if wanted.isdisjoint(gs)}

    def positions(self, game_ids: list[str]) -> set[int]:
        index = self.artifacts.vocab.game_index
        return {index[g] for g in game_ids if g in index}

    def popular(self, k: int, exclude: set[int], genres: list[str]) -> Ranked:
        """Cold start: the most played games, those of the preferred genres first."""
        wanted = {normalize_label(g) for g in genres}
        top = self.popularity.max() or 1.0
        picked = [i for i in self.by_popularity if i not in exclude]
        if wanted:
            picked.sort(key=lambda i: wanted.isdisjoint(self.genres[i]))  # stable: keeps popularity
        picked = picked[:k]
        return Ranked(
            games=np.array(picked, np.int64),
            scores=(self.popularity[picked] / top).astype(np.float32),
        )

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


def shape_response(
    request: RecommendRequest,
    user: EncodedUser,
    ranked: Ranked,
    cold_start: bool,
    catalog: Catalog,
    model_tag: str,
) -> RecommendResponse:
    reasons = catalog.because_you_played(ranked.games, user.games)
    recommendations = [
        Recommendation(**catalog.game(int(g)).model_dump(), score=float(s), because_you_played=r)
        for g, s, r in zip(ranked.games, ranked.scores, reasons, strict=True)
    ]
    return RecommendResponse(
        user_id=request.user_id,
        model=model_tag,
        cold_start=cold_start,
        recommendations=recommendations,
        unknown_games=list(user.unknown_games),
        unknown_genres=list(user.unknown_genres),
    )


class PayloadTooLarge(BentoMLException):
    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class BodyLimit:
    """ASGI middleware: bodies over `max_bytes` get 413 before anything parses them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            response = JSONResponse(
                {
                    "error": f"request body over the limit of {self.max_bytes} bytes "
                    f"(Content-Length: {declared.decode('latin-1')[:40]})"
                },
                status_code=413,
            )
            return await response(scope, receive, send)
        received = 0

        async def counted() -> Message:  # a chunked body has no Content-Length to check
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise PayloadTooLarge(f"request body over the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, counted, send)
