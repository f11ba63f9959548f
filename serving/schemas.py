"""What the HTTP API speaks: request and response models, and the entry service's query to
the batched Embedder.

The bounds come from `limits:` in `configs/service.yaml`, so the OpenAPI spec states them.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from serving.recommender import Ranked, RankQuery
from serving.settings import service_settings
from training.features import EncodedUser, UserRecord

LIMITS = service_settings().limits

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
    """One user's features as the batched service takes them, and the model that encoded them.

    Games and genres are catalog and vocabulary positions of that model, not ids.
    """

    model_tag: str = Field(description="the model whose vocabulary made these positions")
    game_positions: list[int]
    game_weights: list[float]
    achievement_weights: list[float]
    genre_positions: list[int]
    dense: list[float]
    exclude: list[int] = Field(description="catalog positions never to recommend")
    k: int

    @classmethod
    def of(cls, query: RankQuery) -> UserQuery:
        user = query.user
        return cls(
            model_tag=query.model_tag,
            game_positions=user.game_positions.tolist(),
            game_weights=user.game_weights.tolist(),
            achievement_weights=user.achievement_weights.tolist(),
            genre_positions=user.genre_positions.tolist(),
            dense=user.dense.tolist(),
            exclude=sorted(query.exclude),
            k=query.k,
        )

    def rank_query(self) -> RankQuery:
        user = EncodedUser(
            game_positions=np.asarray(self.game_positions, np.int64),
            game_weights=np.asarray(self.game_weights, np.float32),
            achievement_weights=np.asarray(self.achievement_weights, np.float32),
            genre_positions=np.asarray(self.genre_positions, np.int64),
            dense=np.asarray(self.dense, np.float32),
        )
        return RankQuery(user, set(self.exclude), self.k, self.model_tag)


class RankedPositions(BaseModel):
    """The batched Embedder's answer to one `UserQuery`: catalog positions, best first."""

    positions: list[int]
    scores: list[float]

    @classmethod
    def of(cls, ranked: Ranked) -> RankedPositions:
        return cls(positions=ranked.positions.tolist(), scores=ranked.scores.tolist())

    def ranked(self) -> Ranked:
        return Ranked(positions=np.array(self.positions), scores=np.array(self.scores))


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
