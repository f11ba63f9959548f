"""GameRec over HTTP: an entry service and the batched runner (user tower + FAISS top-k).

    bentoml serve service:GameRec          # http://localhost:3000, OpenAPI at /docs

The service classes and their routes; what a request does is in `serving/`, every setting in
`configs/service.yaml` (`serving/settings.py`). Where the runner runs is settled here, at import
(`serving/placement.py`): with `embedder`, GameRec depends on the Embedder service and BentoML
starts it; with `in_process`, GameRec has no dependency and the Embedder is never started.
"""

from __future__ import annotations

import asyncio
import os
from typing import Annotated

import aiohttp
import bentoml
from fastapi import FastAPI, Query, Security
from fastapi.responses import JSONResponse
from pydantic import Field

from serving import bentoml_fixes
from serving.coalesce import Coalescer
from serving.guard import ADMIN_BEARER, ADMIN_RESPONSES, Admission, ErrorMessage, RequestGuard
from serving.orchestration import (
    Rank,
    ServedModel,
    counted,
    in_this_process,
    load_recommender,
    model_info,
    rank_queries,
    recommend,
    similar_games,
    via_embedder,
)
from serving.placement import entry_workers, runner_placement
from serving.recommender import ModelVersions, Recommender
from serving.reload import WantedModel, follow
from serving.schemas import (
    RankedPositions,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    ReloadResponse,
    UserQuery,
)
from serving.settings import service_settings
from training.store import ModelIntegrityError, ModelNotFound, load_model

SETTINGS = service_settings()
PLACEMENT = runner_placement(SETTINGS)
EMBEDDER_ROUTES = ("/top_k", "/load")
ADMISSION = Admission(
    SETTINGS.admission.max_in_flight, SETTINGS.admission.retry_after_s, EMBEDDER_ROUTES
)
UNTRACED_ROUTES = () if SETTINGS.trace_recommend else ("/recommend", "/recommend_batch")
bentoml_fixes.apply_global_fixes(
    SETTINGS.connections,
    ADMISSION,
    entry_workers(SETTINGS, PLACEMENT),
    untraced_routes=(*UNTRACED_ROUTES, *EMBEDDER_ROUTES),
)


@bentoml.service(
    workers=1,
    traffic={"timeout": SETTINGS.request_timeout_s},
    **bentoml_fixes.inner_service_config(*EMBEDDER_ROUTES),
)
class Embedder:
    """The runner: user tower and FAISS top-k, once per batch of users.

    Each query names the model version that encoded it; the current and the previous version
    stay loaded, and a version not loaded yet is loaded from the store on first use.
    """

    bento_model = bentoml.models.BentoModel(SETTINGS.model_tag)

    def __init__(self) -> None:
        self.versions = ModelVersions(
            lambda tag: load_recommender(tag, SETTINGS), keep=SETTINGS.model_versions_kept
        )
        self.versions.get(bentoml_fixes.pinned_model_tag(Embedder, type(self).bento_model))
        bentoml_fixes.freeze_startup_objects()

    @bentoml.api
    async def load(self, tag: str) -> str:
        """Load a model version ahead of the entry service's switch to it."""
        return (await asyncio.to_thread(self.versions.get, tag)).artifacts.tag

    @bentoml.api(
        batchable=True,
        max_batch_size=SETTINGS.batching.max_batch_size,
        max_latency_ms=SETTINGS.batching.max_latency_ms,
    )
    def top_k(self, queries: list[UserQuery]) -> list[RankedPositions]:
        ranked = rank_queries(
            self.versions, [q.rank_query() for q in queries], SETTINGS.faiss_threads
        )
        return [RankedPositions.of(r) for r in ranked]


api = FastAPI()


@bentoml.service(
    workers=entry_workers(SETTINGS, PLACEMENT),
    traffic={"timeout": SETTINGS.request_timeout_s},
    logging={"access": {"enabled": SETTINGS.access_log}},
    **bentoml_fixes.untraced_routes_config(*UNTRACED_ROUTES),
)
@bentoml.asgi_app(api)
class GameRec:
    """The HTTP API: validation, features, response shaping; the batched runner in this process
    or in the Embedder (`placement`)."""

    bento_model = bentoml.models.BentoModel(SETTINGS.model_tag)
    if PLACEMENT == "embedder":
        embedder = bentoml.depends(Embedder)

    def __init__(self) -> None:
        self.versions = ModelVersions(
            lambda tag: load_recommender(tag, SETTINGS), keep=SETTINGS.model_versions_kept
        )
        self.wanted = WantedModel.of_this_worker()
        # Each request reads `self.served` once: a reload swaps it whole.
        self.served = ServedModel.of(self._first_model())
        self._reloading = asyncio.Lock()
        self.coalescer = Coalescer(
            counted(self._runner()),
            max_batch=SETTINGS.batching.max_batch_size,
            max_in_flight=SETTINGS.embedder.max_calls_in_flight,
            alone=lambda: ADMISSION.in_flight <= 1,  # this request is the worker's only one
        )
        bentoml_fixes.freeze_startup_objects()

    def _first_model(self) -> Recommender:
        """The model a reload switched the other workers to (this worker restarted since), or
        the configured one (no reload, or that model is gone from the store)."""
        configured = bentoml_fixes.pinned_model_tag(GameRec, type(self).bento_model)
        try:
            return self.versions.get(self.wanted.read() or configured)
        except ModelIntegrityError:
            return self.versions.get(configured)

    def _runner(self) -> Rank:
        if PLACEMENT == "in_process":
            return in_this_process(
                self.versions, SETTINGS.faiss_threads, SETTINGS.batching.inline_budget_ms
            )
        return via_embedder(
            lambda queries: self.embedder.to_async.top_k(queries), SETTINGS.embedder
        )

    @bentoml.on_startup
    async def follow_reloads(self) -> None:
        """Switch to what a reload received by another worker asked for (serving/reload.py)."""
        self._follower = asyncio.create_task(
            follow(
                self.wanted, lambda: self.served.tag, self._switch, SETTINGS.reload.poll_interval_s
            )
        )

    @bentoml.on_deployment
    def forget_earlier_reloads() -> None:
        """Once, in the `bentoml serve` process: its workers start with the configured model."""
        WantedModel.of_server(os.getpid()).forget()

    @bentoml.on_deployment
    def refuse_a_broken_model() -> None:
        """Once, before any worker starts: a model with a missing or inconsistent part stops
        `bentoml serve` with a message naming the part (a worker failing to start would only be
        restarted, again and again)."""
        load_model(bentoml_fixes.pinned_model_tag(GameRec, GameRec.inner.bento_model))

    async def __is_ready__(self) -> bool:
        """Ready when the model is whole and the Embedder, if any, answers (not while it
        restarts)."""
        served = self.served
        if served.recommender.artifacts.index.ntotal != len(served.catalog.ids):
            return False
        if PLACEMENT == "in_process":
            return True
        try:
            return await self.embedder.to_async.is_ready(SETTINGS.embedder.probe_timeout_s)
        except (aiohttp.ClientError, TimeoutError):
            return False

    @bentoml.api(input_spec=RecommendRequest)
    async def recommend(self, **request) -> RecommendResponse:  # the body's fields
        """Top games for a player: the body is the request as clients send it."""
        # BentoML has validated the body as a RecommendRequest already: no second validation.
        body = RecommendRequest.model_construct(**request)
        return (await recommend(self.served, [body], self.coalescer))[0]

    @bentoml.api
    async def recommend_batch(
        self,
        requests: Annotated[
            list[RecommendRequest], Field(max_length=SETTINGS.limits.max_batch_requests)
        ],
    ) -> list[RecommendResponse]:
        """Several players in one call: `{"requests": [<recommend body>, ...]}`."""
        return await recommend(self.served, requests, self.coalescer)

    @api.get("/similar", responses={404: {"model": ErrorMessage, "description": "unknown game"}})
    def similar(
        self,
        game_id: Annotated[str, Query(max_length=SETTINGS.limits.max_id_length)],
        top_k: Annotated[int, Query(ge=1, le=SETTINGS.limits.max_top_k)] = 10,
    ) -> JSONResponse:
        """Games whose embeddings are nearest to this game's."""
        found = similar_games(self.served, game_id, top_k)
        if found is None:
            return JSONResponse({"error": f"game_id {game_id!r} is not in the catalog"}, 404)
        return JSONResponse(found)

    @api.get("/games")
    def games(
        self,
        query: Annotated[str, Query(max_length=SETTINGS.limits.max_id_length)] = "",
        limit: Annotated[int, Query(ge=1, le=SETTINGS.limits.max_games_page)] = 20,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict:
        """Search the catalog by title (case-insensitive substring), most played first."""
        total, found = self.served.catalog.search(query, limit, offset)
        return {"total": total, "games": [g.model_dump() for g in found]}

    @api.get("/info")
    def info(self) -> dict:
        """What is served: model, data set, catalog, index and the evaluation table."""
        return model_info(self.served)

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
        in this worker and in the Embedder; the other workers follow within
        `reload.poll_interval_s` and a load (serving/reload.py)."""
        tag = body.tag if body and body.tag else SETTINGS.model_tag
        previous = self.served
        try:
            served = await self._switch(tag, tell_the_other_workers=True)
        except ModelIntegrityError as err:
            status = 404 if isinstance(err, ModelNotFound) else 400
            return JSONResponse({"error": str(err)}, status)
        return ReloadResponse(model=served.tag, previous=previous.tag)

    async def _switch(self, tag: str, tell_the_other_workers: bool = False) -> ServedModel:
        """Load and check `tag` (in the Embedder too), then serve it; the version served until
        then stays loaded for the requests still using it. The tag is written for the other
        workers in the same step, so that two reloads at once end with the file naming the
        tag this worker serves."""
        async with self._reloading:
            served = ServedModel.of(await asyncio.to_thread(self.versions.get, tag))
            if PLACEMENT == "embedder":
                await self.embedder.to_async.load(tag=served.tag)
            self.served = served
            if tell_the_other_workers:
                self.wanted.write(served.tag)
        return served


GameRec.add_asgi_middleware(
    RequestGuard,
    max_bytes=SETTINGS.limits.max_body_bytes,
    admin_token=SETTINGS.admin_token.get_secret_value(),
    body_timeout_s=SETTINGS.connections.body_timeout_s,
)
bentoml_fixes.cache_media_types(Embedder, GameRec)
