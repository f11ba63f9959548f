"""GameRec over HTTP: an entry service and the batched embedding + FAISS service it depends on.

    bentoml serve service:GameRec          # http://localhost:3000, OpenAPI at /docs

Wiring only: request models and response shaping live in `training/serving.py`, the model in
`training/recommender.py`, and every setting in `configs/service.yaml`.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Annotated

import aiohttp
import bentoml
import faiss
import numpy as np
import torch
from fastapi import FastAPI, Query, Security
from fastapi.responses import JSONResponse
from pydantic import Field

from training.bentoml_patches import (
    cache_media_types,
    freeze_startup_objects,
    inner_service_config,
    patch_timeout_middleware,
    untraced_routes_config,
)
from training.coalesce import Coalescer
from training.config import load_service_config
from training.recommender import ModelVersions, Ranked, Recommender
from training.serving import (
    ADMIN_BEARER,
    ADMIN_RESPONSES,
    EMBEDDER_CALL_QUERIES,
    Catalog,
    ErrorMessage,
    RankedGames,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    ReloadResponse,
    RequestGuard,
    ServedModel,
    UserQuery,
    correct_openapi_spec,
    rank_queries,
    shape_response,
)
from training.store import ModelIntegrityError, ModelNotFound, load_model

SETTINGS = load_service_config()
patch_timeout_middleware()
correct_openapi_spec()
MODEL_TAG = os.environ.get("GAMEREC_MODEL_TAG", SETTINGS.model_tag)


def _load(tag: str) -> Recommender:
    """Load and check a model version, with this process's configured thread counts."""
    torch.set_num_threads(SETTINGS.torch_threads)
    faiss.omp_set_num_threads(SETTINGS.faiss_threads)
    return Recommender.from_store(tag)


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


@bentoml.service(workers=1, traffic={"timeout": 30}, **inner_service_config("/top_k", "/load"))
class Embedder:
    """The runner: user tower and FAISS top-k, once per batch of users.

    Each query names the model version that encoded it; the current and the previous version
    stay loaded, and a version not loaded yet is loaded from the store on first use.
    """

    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self.versions = ModelVersions(_load)
        self.versions.get(_pinned_tag(Embedder, type(self).model))
        freeze_startup_objects()

    @bentoml.api
    async def load(self, tag: str) -> str:
        """Load a model version ahead of the entry service's switch to it."""
        return (await asyncio.to_thread(self.versions.get, tag)).artifacts.tag

    @bentoml.api(
        batchable=True,
        max_batch_size=SETTINGS.batching.max_batch_size,
        max_latency_ms=SETTINGS.batching.max_latency_ms,
    )
    def top_k(self, queries: list[UserQuery]) -> list[RankedGames]:
        # OpenMP thread counts are per calling thread, and this runs in a pool thread.
        faiss.omp_set_num_threads(SETTINGS.faiss_threads)
        return rank_queries(self.versions, queries)


api = FastAPI()


UNTRACED_ROUTES = () if SETTINGS.trace_recommend else ("/recommend", "/recommend_batch")


@bentoml.service(
    workers=SETTINGS.workers, traffic={"timeout": 30}, **untraced_routes_config(*UNTRACED_ROUTES)
)
@bentoml.asgi_app(api)
class GameRec:
    """The HTTP API: validation, features, response shaping."""

    model = bentoml.models.BentoModel(MODEL_TAG)
    embedder = bentoml.depends(Embedder)

    def __init__(self) -> None:
        self.served = ServedModel.of(_load(_pinned_tag(GameRec, type(self).model)))
        self._reloading = asyncio.Lock()
        self.coalescer = Coalescer(
            self._top_k,
            max_batch=SETTINGS.batching.max_batch_size,
            max_in_flight=SETTINGS.embedder.max_calls_in_flight,
        )
        freeze_startup_objects()

    @bentoml.on_deployment
    def refuse_a_broken_model() -> None:
        """Once, before any worker starts: a model with a missing or inconsistent part stops
        `bentoml serve` with a message naming the part (a worker failing to start would only be
        restarted, again and again)."""
        load_model(_pinned_tag(GameRec, GameRec.inner.model))

    # Each request reads `self.served` once: a reload swaps it whole, and requests in flight
    # finish with the version they started with.
    @property
    def catalog(self) -> Catalog:
        """The served catalog, for in-process callers."""
        return self.served.catalog

    async def __is_ready__(self) -> bool:
        """Ready when the model is whole and the Embedder answers (not while it restarts)."""
        served = self.served
        if served.recommender.artifacts.index.ntotal != len(served.catalog.ids):
            return False
        try:
            return await self.embedder.to_async.is_ready(SETTINGS.embedder.probe_timeout_s)
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _top_k(self, queries: list[UserQuery]) -> list[RankedGames]:
        """The Embedder's answer; while its worker restarts (connection refused or dropped),
        wait and retry for up to `embedder.retry_s`, so that callers see latency, not errors."""
        EMBEDDER_CALL_QUERIES.observe(len(queries))
        deadline = time.monotonic() + SETTINGS.embedder.retry_s
        while True:
            try:
                return await self.embedder.to_async.top_k(queries)
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(SETTINGS.embedder.retry_interval_s)

    async def _recommend(self, requests: list[RecommendRequest]) -> list[RecommendResponse]:
        served = self.served
        users = served.recommender.encode([r.record() for r in requests])
        catalog = served.catalog
        excluded = [
            catalog.positions(r.exclude_games)
            | (catalog.outside_genres(r.only_genres) if r.only_genres else set())
            for r in requests
        ]
        warm = [i for i, u in enumerate(users) if len(u.games)]
        queries = [
            UserQuery.from_encoded(users[i], excluded[i], requests[i].top_k, served.tag)
            for i in warm
        ]
        ranked = dict(zip(warm, await self.coalescer(queries), strict=True)) if warm else {}
        responses = []
        for i, (request, user) in enumerate(zip(requests, users, strict=True)):
            if i in ranked:
                result = Ranked(games=np.array(ranked[i].games), scores=np.array(ranked[i].scores))
            else:
                result = catalog.popular(request.top_k, excluded[i], request.genres)
            responses.append(
                shape_response(request, user, result, i not in ranked, catalog, served.tag)
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

    @api.get("/similar", responses={404: {"model": ErrorMessage, "description": "unknown game"}})
    def similar(
        self,
        game_id: Annotated[str, Query(max_length=SETTINGS.limits.max_id_length)],
        top_k: Annotated[int, Query(ge=1, le=SETTINGS.limits.max_top_k)] = 10,
    ) -> JSONResponse:
        """Games whose embeddings are nearest to this game's."""
        served = self.served
        position = served.recommender.artifacts.vocab.game_index.get(game_id)
        if position is None:
            return JSONResponse({"error": f"game_id {game_id!r} is not in the catalog"}, 404)
        ranked = served.recommender.similar(position, top_k)
        return JSONResponse(
            {
                "game": served.catalog.game(position).model_dump(),
                "similar": [
                    {**served.catalog.game(int(g)).model_dump(), "score": float(s)}
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
        total, found = self.served.catalog.search(query, limit, offset)
        return {"total": total, "games": [g.model_dump() for g in found]}

    @api.get("/info")
    def info(self) -> dict:
        """What is served: model, data set, catalog, index and the evaluation table."""
        served = self.served
        artifacts = served.recommender.artifacts
        metrics = artifacts.metrics
        return {
            "model": artifacts.tag,
            "created": artifacts.created,
            "dataset": artifacts.dataset,
            "catalog_size": len(served.catalog.ids),
            "embedding_dim": int(artifacts.item_embeddings.shape[1]),
            "index": metrics["index"],
            "evaluation": metrics["evaluation"],
            "training": {k: v for k, v in metrics["training"].items() if k != "epochs"},
        }

    @api.post(
        "/admin/reload",
        response_model=ReloadResponse,
        responses=ADMIN_RESPONSES,
        dependencies=[Security(ADMIN_BEARER)],
    )
    async def reload(self, body: ReloadRequest | None = None) -> ReloadResponse | JSONResponse:
        """Serve another model version without failing a request (`Authorization: Bearer
        $GAMEREC_ADMIN_TOKEN`). Default: the configured tag resolved now, i.e. the newest model
        after `gamerec train`. The old version serves until the new one is loaded and checked,
        in this worker and in the Embedder."""
        async with self._reloading:
            tag = body.tag if body and body.tag else MODEL_TAG
            try:
                served = await asyncio.to_thread(lambda: ServedModel.of(_load(tag)))
            except ModelIntegrityError as err:
                status = 404 if isinstance(err, ModelNotFound) else 400
                return JSONResponse({"error": str(err)}, status)
            await self.embedder.to_async.load(tag=served.tag)
            previous, self.served = self.served, served
        return ReloadResponse(model=served.tag, previous=previous.tag)


GameRec.add_asgi_middleware(RequestGuard, max_bytes=SETTINGS.limits.max_body_bytes)
cache_media_types(Embedder, GameRec)
