"""GameRec over HTTP: an entry service and the batched embedding + FAISS service it depends on.

    bentoml serve service:GameRec          # http://localhost:3000, OpenAPI at /docs

Wiring only: request models and response shaping live in `training/serving.py`, the model in
`training/recommender.py`, and every setting in `configs/service.yaml`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import bentoml
import faiss
import torch
from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse
from pydantic import Field

from training.bentoml_patches import (
    NO_RECYCLING,
    freeze_startup_objects,
    patch_timeout_middleware,
)
from training.config import load_service_config
from training.recommender import Ranked, Recommender
from training.serving import (
    BodyLimit,
    Catalog,
    RankedGames,
    RecommendRequest,
    RecommendResponse,
    UserQuery,
    shape_response,
)
from training.store import load_model_dir

SETTINGS = load_service_config()
patch_timeout_middleware()
MODEL_TAG = os.environ.get("GAMEREC_MODEL_TAG", SETTINGS.model_tag)


def _load(service: bentoml.Service, reference: bentoml.models.BentoModel) -> Recommender:
    """Load the model once per worker, with explicit thread counts."""
    torch.set_num_threads(SETTINGS.torch_threads)
    faiss.omp_set_num_threads(SETTINGS.faiss_threads)
    model = bentoml.models.get(_pinned_tag(service, reference))
    return Recommender(load_model_dir(Path(model.path), tag=str(model.tag),
                                      created=model.info.creation_time.isoformat(),
                                      dataset=model.info.labels.get("dataset", "unknown")))


def _pinned_tag(service: bentoml.Service, reference: bentoml.models.BentoModel) -> str:
    """Inside a Bento, the exact model version it was built with; else the configured tag.

    BentoML re-resolves `BentoModel("gamerec:latest")` against the local store when a Bento
    serves outside a container, which could serve a newer model than the one built in.
    """
    bento = getattr(service, "bento", None)
    if bento is not None:
        for model in bento.info.all_models:
            if model.tag.name == reference.tag.name:
                return str(model.tag)
    return str(reference.tag)


@bentoml.service(workers=1, traffic={"timeout": 30}, runner_connection=NO_RECYCLING)
class Embedder:
    """The runner: user tower and FAISS top-k, once per batch of users."""

    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.recommender = _load(Embedder, type(self).model)
        freeze_startup_objects()

    @bentoml.api(
        batchable=True,
        max_batch_size=SETTINGS.batching.max_batch_size,
        max_latency_ms=SETTINGS.batching.max_latency_ms,
    )
    def top_k(self, queries: list[UserQuery]) -> list[RankedGames]:
        users = [q.encoded() for q in queries]
        exclude = [set(q.exclude) for q in queries]
        ranked = self.recommender.top_k(users, max(q.k for q in queries), exclude)
        return [
            RankedGames(games=r.games[: q.k].tolist(), scores=r.scores[: q.k].tolist())
            for r, q in zip(ranked, queries, strict=True)
        ]


api = FastAPI()


@bentoml.service(workers=SETTINGS.workers, traffic={"timeout": 30})
@bentoml.asgi_app(api)
class GameRec:
    """The HTTP API: validation, features, response shaping."""

    model = bentoml.models.BentoModel(MODEL_TAG)
    embedder = bentoml.depends(Embedder)

    def __init__(self) -> None:
        self.recommender = _load(GameRec, type(self).model)
        self.artifacts = self.recommender.artifacts
        self.catalog = Catalog(self.artifacts)
        freeze_startup_objects()

    def __is_ready__(self) -> bool:
        return self.artifacts.index.ntotal == len(self.catalog.ids)

    async def _recommend(self, requests: list[RecommendRequest]) -> list[RecommendResponse]:
        users = self.recommender.encode([r.record() for r in requests])
        excluded = [
            self.catalog.positions(r.exclude_games)
            | (self.catalog.outside_genres(r.only_genres) if r.only_genres else set())
            for r in requests
        ]
        warm = [i for i, u in enumerate(users) if len(u.games)]
        queries = [UserQuery.from_encoded(users[i], excluded[i], requests[i].top_k) for i in warm]
        ranked = (
            dict(zip(warm, await self.embedder.to_async.top_k(queries), strict=True))
            if warm
            else {}
        )
        responses = []
        for i, (request, user) in enumerate(zip(requests, users, strict=True)):
            if i in ranked:
                result = Ranked(games=ranked[i].games, scores=ranked[i].scores)
            else:
                result = self.catalog.popular(request.top_k, excluded[i], request.genres)
            responses.append(
                shape_response(
                    request, user, result, i not in ranked, self.catalog, self.artifacts.tag
                )
            )
        return responses

    @bentoml.api(input_spec=RecommendRequest)
    async def recommend(self, **request) -> RecommendResponse:  # noqa: ANN003 - the body's fields
        """Top games for a player: the body is the request as clients send it."""
        return (await self._recommend([RecommendRequest(**request)]))[0]

    @bentoml.api
    async def recommend_batch(
        self,
        requests: Annotated[
            list[RecommendRequest], Field(max_length=SETTINGS.limits.max_batch_requests)
        ],
    ) -> list[RecommendResponse]:
        """Several players in one call: `{"requests": [<recommend body>, ...]}`."""
        return await self._recommend(requests)

    @api.get("/similar")
    def similar(
        self,
        game_id: Annotated[str, Query(max_length=SETTINGS.limits.max_id_length)],
        top_k: Annotated[int, Query(ge=1, le=SETTINGS.limits.max_top_k)] = 10,
    ) -> JSONResponse:
        """Games whose embeddings are nearest to this game's."""
        position = self.artifacts.vocab.game_index.get(game_id)
        if position is None:
            return JSONResponse({"error": f"game_id {game_id!r} is not in the catalog"}, 404)
        ranked = self.recommender.similar(position, top_k)
        return JSONResponse(
            {
                "game": self.catalog.game(position).model_dump(),
                "similar": [
                    {**self.catalog.game(int(g)).model_dump(), "score": float(s)}
                    for g, s in zip(ranked.games, ranked.scores, strict=True)
                ],
            }
        )

    @api.get("/games")
    def games(
        self,
        query: Annotated[str, Query(max_length=SETTINGS.limits.max_id_length)] = "",
        limit: Annotated[int, Query(ge=1, le=500)] = 20,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict:
        """Search the catalog by title (case-insensitive substring), most played first."""
        total, found = self.catalog.search(query, limit, offset)
        return {"total": total, "games": [g.model_dump() for g in found]}

    @api.get("/info")
    def info(self) -> dict:
        """What is served: model, data set, catalog, index and the evaluation table."""
        metrics = self.artifacts.metrics
        return {
            "model": self.artifacts.tag,
            "created": self.artifacts.created,
            "dataset": self.artifacts.dataset,
            "catalog_size": len(self.catalog.ids),
            "embedding_dim": int(self.artifacts.item_embeddings.shape[1]),
            "index": metrics["index"],
            "evaluation": metrics["evaluation"],
            "training": {k: v for k, v in metrics["training"].items() if k != "epochs"},
        }


GameRec.add_asgi_middleware(BodyLimit, max_bytes=SETTINGS.limits.max_body_bytes)
