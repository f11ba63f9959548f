"""A request's path through the service: features, the batched top-k, and the response.

The entry service (`service.py`) and the FastAPI peer (`benchmarks/peer_fastapi.py`) both
answer with `recommend`; they differ only in the `Rank` they pass: the entry service's coalescer
over `via_embedder` (the batched Embedder service) or `in_this_process` (`rank_queries` on a
worker thread, `placement` in configs/service.yaml), the peer `in_this_process` per request.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import faiss
import torch
from prometheus_client import Histogram

from serving.catalog import Catalog
from serving.recommender import ModelVersions, Ranked, RankQuery, Recommender
from serving.schemas import (
    RankedPositions,
    Recommendation,
    RecommendRequest,
    RecommendResponse,
    UserQuery,
)
from serving.settings import EmbedderConfig, ServiceSettings
from training.features import EncodedUser

Rank = Callable[[list[RankQuery]], Awaitable[list[Ranked]]]
EmbedderCall = Callable[[list[UserQuery]], Awaitable[list[RankedPositions]]]

# In /metrics next to BentoML's own: how well the entry service coalesces its runner calls.
RUNNER_CALL_QUERIES = Histogram(
    "gamerec_runner_call_queries",
    "User queries per call of the entry service to the batched runner, in this process or the "
    "Embedder (coalesced, serving/coalesce.py)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)


def load_recommender(tag: str, settings: ServiceSettings) -> Recommender:
    """Load and check a model version, with this process's configured thread counts."""
    torch.set_num_threads(settings.torch_threads)
    faiss.omp_set_num_threads(settings.faiss_threads)
    return Recommender.from_store(tag)


@dataclass(frozen=True)
class ServedModel:
    """The model version the entry service answers with; a reload replaces the whole object,
    so a request that read it once finishes with the version it started with."""

    recommender: Recommender
    catalog: Catalog

    @classmethod
    def of(cls, recommender: Recommender) -> ServedModel:
        return cls(recommender, Catalog(recommender.artifacts))

    @property
    def tag(self) -> str:
        return self.recommender.artifacts.tag


async def recommend(
    served: ServedModel, requests: list[RecommendRequest], rank: Rank
) -> list[RecommendResponse]:
    """Answers in request order: players with a known game through `rank` (one call for all),
    the others from popularity (cold start)."""
    users = served.recommender.encode([r.record() for r in requests])
    catalog = served.catalog
    excluded = [
        catalog.positions(r.exclude_games)
        | (catalog.outside_genres(r.only_genres) if r.only_genres else set())
        for r in requests
    ]
    warm = [i for i, u in enumerate(users) if len(u.game_positions)]
    queries = [RankQuery(users[i], excluded[i], requests[i].top_k, served.tag) for i in warm]
    ranked = dict(zip(warm, await rank(queries), strict=True)) if warm else {}
    return [
        shape_response(
            request,
            user,
            ranked[i]
            if i in ranked
            else catalog.popular(request.top_k, excluded[i], request.genres),
            i not in ranked,
            catalog,
            served.tag,
        )
        for i, (request, user) in enumerate(zip(requests, users, strict=True))
    ]


def rank_queries(
    versions: ModelVersions, queries: list[RankQuery], faiss_threads: int
) -> list[Ranked]:
    """The batched runner's work: one user-tower pass and one FAISS search per model version
    among the queries; answers in query order, `k` games each."""
    # OpenMP thread counts are per calling thread, and callers run this in pool threads.
    faiss.omp_set_num_threads(faiss_threads)
    ranked: dict[int, Ranked] = {}
    for tag in dict.fromkeys(q.model_tag for q in queries):
        batch = [i for i, q in enumerate(queries) if q.model_tag == tag]
        found = versions.get(tag).top_k(
            [queries[i].user for i in batch],
            max(queries[i].k for i in batch),
            [queries[i].exclude for i in batch],
        )
        ranked.update(zip(batch, found, strict=True))
    return [
        Ranked(positions=ranked[i].positions[: q.k], scores=ranked[i].scores[: q.k])
        for i, q in enumerate(queries)
    ]


def in_this_process(versions: ModelVersions, faiss_threads: int, inline_budget_ms: float) -> Rank:
    """`rank_queries` in this process. A call whose search should take at most
    `inline_budget_ms` (the index's measured time per query, times the queries) runs right on
    the event loop: the hop to a worker thread and back costs more than such a call
    (docs/performance.md, round 8). A longer call runs on a worker thread, where the loop goes on
    reading and answering other requests meanwhile (torch and FAISS release the GIL)."""

    async def rank(queries: list[RankQuery]) -> list[Ranked]:
        if _search_ms(versions, queries) <= inline_budget_ms:
            return rank_queries(versions, queries, faiss_threads)
        return await asyncio.to_thread(rank_queries, versions, queries, faiss_threads)

    return rank


def _search_ms(versions: ModelVersions, queries: list[RankQuery]) -> float:
    """The expected search time of the queries; infinite if a version is still to be loaded
    (a load is never done on the event loop)."""
    total = 0.0
    for tag in {q.model_tag for q in queries}:
        recommender = versions.loaded(tag)
        if recommender is None:
            return math.inf
        total += recommender.search_ms * sum(q.model_tag == tag for q in queries)
    return total


def via_embedder(call: EmbedderCall, cfg: EmbedderConfig) -> Rank:
    """`call` (the Embedder's `top_k`) with the queries as it takes them, retried while the
    Embedder's worker restarts (connection refused or dropped) for up to `cfg.retry_s`, so that
    callers see latency, not errors."""

    async def rank(queries: list[RankQuery]) -> list[Ranked]:
        sent = [UserQuery.of(q) for q in queries]
        deadline = time.monotonic() + cfg.retry_s
        while True:
            try:
                return [answer.ranked() for answer in await call(sent)]
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(cfg.retry_interval_s)

    return rank


def counted(rank: Rank) -> Rank:
    """`rank`, each call's number of queries observed in `RUNNER_CALL_QUERIES`."""

    async def counting(queries: list[RankQuery]) -> list[Ranked]:
        RUNNER_CALL_QUERIES.observe(len(queries))
        return await rank(queries)

    return counting


def shape_response(
    request: RecommendRequest,
    user: EncodedUser,
    ranked: Ranked,
    cold_start: bool,
    catalog: Catalog,
    model_tag: str,
) -> RecommendResponse:
    reasons = catalog.because_you_played(ranked.positions, user.game_positions)
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
            ranked.positions.tolist(), ranked.scores.tolist(), reasons, strict=True
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


def similar_games(served: ServedModel, game_id: str, k: int) -> dict | None:
    """`GET /similar`'s answer: the game and its nearest games; None for an unknown id."""
    position = served.recommender.artifacts.vocab.game_index.get(game_id)
    if position is None:
        return None
    ranked = served.recommender.similar(position, k)
    return {
        "game": served.catalog.game(position).model_dump(),
        "similar": [
            {**served.catalog.game(int(g)).model_dump(), "score": float(s)}
            for g, s in zip(ranked.positions, ranked.scores, strict=True)
        ],
    }


def model_info(served: ServedModel) -> dict:
    """`GET /info`'s answer: model, the worker process that answers, data set, catalog, index
    and the evaluation table."""
    artifacts = served.recommender.artifacts
    metrics = artifacts.metrics
    return {
        "model": artifacts.tag,
        "worker_pid": os.getpid(),
        "created": artifacts.created,
        "dataset": artifacts.dataset,
        "catalog_size": len(served.catalog.ids),
        "embedding_dim": int(artifacts.item_embeddings.shape[1]),
        "index": metrics["index"],
        "evaluation": metrics["evaluation"],
        "training": {k: v for k, v in metrics["training"].items() if k != "epochs"},
    }
