"""The serving code without a server: model versions, the batched ranking, the catalog and a
request's orchestration, on a small untrained model."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from serving import orchestration
from serving.catalog import Catalog
from serving.orchestration import ServedModel, in_this_process, rank_queries, recommend
from serving.recommender import ModelVersions, RankQuery, Recommender
from serving.schemas import RankedPositions, RecommendRequest, UserQuery
from tests.unit.conftest import tiny_artifacts
from training.store import ModelArtifacts


def test_model_versions_keep_the_newest_and_load_each_tag_once():
    loaded: list[str] = []

    def load(tag: str) -> Recommender:
        loaded.append(tag)
        return Recommender(tiny_artifacts(tag=tag))

    versions = ModelVersions(load, keep=2)
    first = versions.get("gamerec:v1")
    assert versions.get("gamerec:v1") is first
    versions.get("gamerec:v2")
    versions.get("gamerec:v3")  # v1 is dropped: two are kept
    assert versions.get("gamerec:v2").artifacts.tag == "gamerec:v2"
    versions.get("gamerec:v1")
    assert loaded == ["gamerec:v1", "gamerec:v2", "gamerec:v3", "gamerec:v1"]


def test_an_alias_is_resolved_and_not_kept():
    versions = ModelVersions(lambda tag: Recommender(tiny_artifacts(tag="gamerec:v7")), keep=2)
    assert versions.get("gamerec:latest").artifacts.tag == "gamerec:v7"
    assert versions.get("gamerec:v7") is versions.get("gamerec:latest")


def _query(recommender: Recommender, played: list[str], k: int, exclude: set[int]) -> RankQuery:
    from training.features import UserRecord

    user = recommender.encode([UserRecord(time_played={g: 30.0 for g in played})])[0]
    return RankQuery(user, exclude, k, recommender.artifacts.tag)


def test_rank_queries_answers_in_order_across_versions(artifacts: ModelArtifacts):
    old, new = Recommender(artifacts), Recommender(tiny_artifacts(tag="gamerec:new", seed=1))
    versions = ModelVersions({"gamerec:tiny": old, "gamerec:new": new}.__getitem__, keep=2)
    queries = [
        _query(old, ["g_0"], 3, set()),
        _query(new, ["g_1", "g_2"], 5, {3}),
        _query(old, ["g_4"], 2, {0, 1}),
    ]
    answers = rank_queries(versions, queries, faiss_threads=1)
    assert [len(a.positions) for a in answers] == [3, 5, 2]
    for query, answer in zip(queries, answers, strict=True):
        recommender = versions.get(query.model_tag)
        alone = recommender.top_k([query.user], query.k, [query.exclude])[0]
        assert answer.positions.tolist() == alone.positions.tolist()  # the same as asked alone
        assert set(answer.positions.tolist()).isdisjoint(
            set(query.user.game_positions.tolist()) | query.exclude
        )


def test_the_embedder_wire_format_carries_a_query_whole(artifacts: ModelArtifacts):
    """What the Embedder placement sends and answers is what the in-process placement uses."""
    recommender = Recommender(artifacts)
    query = _query(recommender, ["g_0", "g_5"], 4, {2, 7})
    sent = UserQuery.model_validate_json(UserQuery.of(query).model_dump_json()).rank_query()
    assert (sent.model_tag, sent.k, sent.exclude) == (query.model_tag, 4, {2, 7})
    np.testing.assert_array_equal(sent.user.game_positions, query.user.game_positions)
    np.testing.assert_allclose(sent.user.dense, query.user.dense)
    versions = ModelVersions(lambda tag: recommender, keep=2)
    here = asyncio.run(in_this_process(versions, faiss_threads=1, inline_budget_ms=0)([query]))[0]
    answered = RankedPositions.of(rank_queries(versions, [sent], faiss_threads=1)[0]).ranked()
    assert answered.positions.tolist() == here.positions.tolist()
    np.testing.assert_allclose(answered.scores, here.scores)


def test_a_short_call_runs_on_the_event_loop_a_long_one_on_a_worker_thread(
    artifacts: ModelArtifacts, monkeypatch
):
    recommender = Recommender(artifacts)
    monkeypatch.setitem(artifacts.metrics["index"], "query_cpu_ms", 0.5)
    versions = ModelVersions(lambda tag: recommender, keep=2)
    versions.get(artifacts.tag)  # loaded: the service loads its model at start
    threads: list[bool] = []
    ranked_for_real = orchestration.rank_queries

    def recording(*args, **kwargs):
        threads.append(threading.current_thread() is threading.main_thread())
        return ranked_for_real(*args, **kwargs)

    monkeypatch.setattr(orchestration, "rank_queries", recording)
    rank = in_this_process(versions, faiss_threads=1, inline_budget_ms=2.0)
    query = _query(recommender, ["g_0"], 3, set())
    four, five = [query] * 4, [query] * 5
    asyncio.run(rank([]))  # no version to load: nothing to search
    assert threads == [True]
    asyncio.run(rank(four))  # 4 x 0.5 ms: within the budget
    asyncio.run(rank(five))  # 2.5 ms: over it
    assert threads == [True, True, False]
    unloaded = ModelVersions(lambda tag: recommender, keep=2)  # nothing loaded yet
    asyncio.run(in_this_process(unloaded, faiss_threads=1, inline_budget_ms=2.0)(four))
    assert threads[-1] is False  # a version to load is loaded on a worker thread


def test_catalog_lookups(artifacts: ModelArtifacts):
    catalog = Catalog(artifacts)
    assert catalog.positions(["g_3", "nope", "g_0"]) == {0, 3}
    assert catalog.outside_genres(["RPG"]) == {p for p in range(12) if p % 3 != 0}
    popular = catalog.popular(4, exclude={0}, genres=["puzzle"])
    assert popular.positions.tolist() == [1, 4, 7, 10]  # the puzzle games, by popularity
    assert popular.scores[0] == pytest.approx(47 / 50)
    total, found = catalog.search("game 1", limit=2, offset=0)
    assert total == 3 and [g.game_id for g in found] == ["g_1", "g_10"]


def test_recommend_orchestrates_warm_and_cold_players(artifacts: ModelArtifacts):
    served = ServedModel.of(Recommender(artifacts))
    versions = ModelVersions(lambda tag: served.recommender, keep=2)
    calls: list[int] = []

    async def rank(queries: list[RankQuery]):
        calls.append(len(queries))
        return rank_queries(versions, queries, faiss_threads=1)

    requests = [
        RecommendRequest(user_id="warm", time_played={"g_0": 60.0, "zzz": 1.0}, top_k=3),
        RecommendRequest(user_id="cold", genres=["rpg", "jazz"], top_k=2),
        RecommendRequest(user_id="picky", time_played={"g_1": 5.0}, only_genres=["rpg"]),
    ]
    warm, cold, picky = asyncio.run(recommend(served, requests, rank))
    assert calls == [2]  # one call for both players with a known game
    assert not warm.cold_start and len(warm.recommendations) == 3
    assert "g_0" not in {r.game_id for r in warm.recommendations}
    assert warm.unknown_games == ["zzz"]
    assert all(r.because_you_played == "g_0" for r in warm.recommendations)
    assert cold.cold_start and [r.game_id for r in cold.recommendations] == ["g_0", "g_3"]
    assert cold.unknown_genres == ["jazz"]
    assert {r.game_id for r in picky.recommendations} <= {f"g_{i}" for i in range(0, 12, 3)}
    assert warm.model == cold.model == "gamerec:tiny"
    assert np.isfinite([r.score for r in warm.recommendations]).all()
