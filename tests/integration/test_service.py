"""The HTTP API: in-process calls of the service class, then a real `bentoml serve` process."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.recommender import Recommender
from serving.settings import service_settings
from tests.servers import BENTOML, PROJECT_ROOT, running_server
from training.features import UserRecord

EXAMPLE = {
    "user_id": "u_123",
    "time_played": {"g_221": 120.0},
    "genres": ["rpg", "roguelike"],
    "achievements": {"g_221": 15},
    "top_k": 10,
}


@pytest.fixture(scope="module")
def service_module(trained):
    os.environ["GAMEREC_MODEL_TAG"] = trained.tag
    service_settings.cache_clear()  # the settings read the tag once per process
    import service

    yield importlib.reload(service)  # the module reads the settings at import
    del os.environ["GAMEREC_MODEL_TAG"]
    service_settings.cache_clear()


@pytest.fixture(scope="module")
def svc(service_module):
    return service_module.GameRec()


def _player(trained, n: int = 8) -> dict[str, float]:
    """A real test player's history, as a client would send it."""
    h, games = trained.histories, trained.artifacts.vocab.game_ids
    user = next(u for u in trained.split.test.users if h.indptr[u + 1] - h.indptr[u] >= n)
    span = h.span(user)
    return {
        games[g]: float(m) for g, m in zip(h.game_positions[span], h.minutes[span], strict=True)
    }


# ---------------------------------------------------------------- in-process


def test_recommend_in_process(svc, trained):
    played = _player(trained)
    response = asyncio.run(svc.recommend(user_id="p", time_played=played, top_k=10))
    assert not response.cold_start
    assert len(response.recommendations) == 10
    ids = [r.game_id for r in response.recommendations]
    assert set(ids).isdisjoint(played)
    assert all(r.because_you_played in played for r in response.recommendations)
    scores = [r.score for r in response.recommendations]
    assert scores == sorted(scores, reverse=True)


def test_cold_start_is_popular_and_genre_aware(svc):
    plain = asyncio.run(svc.recommend(user_id="new", top_k=5))
    assert plain.cold_start
    popularity = svc.served.catalog.popularity
    assert [svc.served.catalog.ids[i] for i in np.argsort(-popularity, kind="stable")[:5]] == [
        r.game_id for r in plain.recommendations
    ]
    rpg = asyncio.run(svc.recommend(user_id="new", genres=["RPG"], top_k=5))
    assert rpg.cold_start and all("rpg" in r.genres for r in rpg.recommendations)


def test_unknown_games_are_ignored_and_listed(svc):
    response = asyncio.run(
        svc.recommend(user_id="x", time_played={"g_0": 30.0, "nope": 5.0}, genres=["jazz"], top_k=3)
    )
    assert response.unknown_games == ["nope"] and response.unknown_genres == ["jazz"]
    assert not response.cold_start
    only_unknown = asyncio.run(svc.recommend(user_id="x", time_played={"nope": 5.0}, top_k=3))
    assert only_unknown.cold_start


def test_filters_only_genres_and_exclude(svc, trained):
    played = _player(trained)
    base = asyncio.run(svc.recommend(user_id="p", time_played=played, top_k=5))
    dropped = [r.game_id for r in base.recommendations[:2]]
    filtered = asyncio.run(
        svc.recommend(
            user_id="p",
            time_played=played,
            top_k=5,
            exclude_games=dropped,
            only_genres=["strategy"],
        )
    )
    assert all("strategy" in r.genres for r in filtered.recommendations)
    assert set(dropped).isdisjoint(r.game_id for r in filtered.recommendations)


def test_similar_games_and_catalog_search(svc):
    similar = svc.similar(game_id="g_1", top_k=5)
    body = json.loads(similar.body)
    assert body["game"]["game_id"] == "g_1" and len(body["similar"]) == 5
    assert "g_1" not in [g["game_id"] for g in body["similar"]]
    assert svc.similar(game_id="nope", top_k=5).status_code == 404
    title = svc.served.catalog.titles[3]
    found = svc.games(query=title.upper(), limit=5, offset=0)
    assert found["total"] >= 1 and title in [g["title"] for g in found["games"]]


def test_info_describes_the_served_model(svc, trained):
    info = svc.info()
    assert info["model"] == trained.tag
    assert info["catalog_size"] == len(trained.artifacts.vocab.game_ids)
    assert info["index"]["type"] == "flat" and info["index"]["recall_at_10"] == 1.0
    assert set(info["evaluation"]) == {"popularity", "ease", "two-tower"}


# ---------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def server(served: str) -> httpx.Client:
    return httpx.Client(base_url=served, timeout=30)


@pytest.mark.slow
class TestHTTP:
    def test_example_body_as_clients_send_it(self, server, trained):
        response = server.post("/recommend", json=EXAMPLE)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["user_id"] == "u_123" and body["model"] == trained.tag
        assert len(body["recommendations"]) == 10
        first = body["recommendations"][0]
        assert set(first) == {"game_id", "title", "genres", "score", "because_you_played"}
        assert "g_221" not in [r["game_id"] for r in body["recommendations"]]

    def test_http_equals_the_python_api(self, server, trained):
        played = _player(trained)
        body = server.post(
            "/recommend", json={"user_id": "p", "time_played": played, "top_k": 20}
        ).json()
        expected = Recommender(trained.artifacts).recommend([UserRecord(time_played=played)], 20)[0]
        games = trained.artifacts.vocab.game_ids
        assert [r["game_id"] for r in body["recommendations"]] == [
            games[g] for g in expected.positions
        ]
        np.testing.assert_allclose(
            [r["score"] for r in body["recommendations"]], expected.scores, rtol=1e-5
        )

    def test_batch(self, server):
        response = server.post("/recommend_batch", json={"requests": [EXAMPLE, {"user_id": "n"}]})
        assert response.status_code == 200, response.text
        first, second = response.json()
        assert not first["cold_start"] and second["cold_start"]
        too_many = server.post("/recommend_batch", json={"requests": [EXAMPLE] * 101})
        assert too_many.status_code == 400 and "requests" in too_many.text

    def test_recommend_routes_build_no_spans(self, server):
        """`trace_recommend: false` (the default): no span, hence no request id from BentoML."""
        response = server.post("/recommend", json=EXAMPLE)
        assert response.status_code == 200
        assert "x-bentoml-request-id" not in response.headers

    def test_get_endpoints(self, server):
        assert server.get("/similar", params={"game_id": "g_2", "top_k": 3}).status_code == 200
        assert server.get("/similar", params={"game_id": "zzz"}).status_code == 404
        assert server.get("/games", params={"query": "a", "limit": 2}).json()["total"] > 0
        assert server.get("/info").json()["catalog_size"] > 0
        assert server.get("/livez").status_code == 200
        assert server.get("/readyz").status_code == 200
        assert "bentoml_service_request_total" in server.get("/metrics").text
        spec = server.get("/docs.json").json()
        assert {"/recommend", "/recommend_batch"} <= set(spec["paths"])

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({**EXAMPLE, "time_played": {"g_1": -5.0}}, "time_played"),
            ({**EXAMPLE, "time_played": {"g_1": "120"}}, "time_played"),
            ({**EXAMPLE, "top_k": 0}, "top_k"),
            ({**EXAMPLE, "top_k": 101}, "top_k"),
            ({**EXAMPLE, "top_k": "ten"}, "top_k"),
            ({**EXAMPLE, "time_played": {f"g_{i}": 1.0 for i in range(1001)}}, "time_played"),
            ({**EXAMPLE, "achievements": {"g_1": -1}}, "achievements"),
            ({**EXAMPLE, "genres": "rpg"}, "genres"),
            ({k: v for k, v in EXAMPLE.items() if k != "user_id"}, "user_id"),
            ({**EXAMPLE, "surprise": 1}, "surprise"),
        ],
        ids=[
            "negative",
            "string-minutes",
            "top-k-0",
            "top-k-101",
            "top-k-type",
            "history-1001",
            "negative-achievements",
            "genres-type",
            "no-user",
            "unknown-field",
        ],
    )
    def test_bad_input_is_400_naming_the_field(self, server, body, field):
        response = server.post("/recommend", json=body)
        assert response.status_code == 400, response.text
        assert field in response.text

    def test_non_finite_and_malformed_json(self, server):
        headers = {"content-type": "application/json"}
        for raw in (
            b'{"user_id": "u", "time_played": {"g_1": NaN}}',
            b'{"user_id": "u", "time_played": {"g_1": Infinity}}',
            b'{"user_id": "u", ',
            b"",
            b"[1, 2]",
        ):
            response = server.post("/recommend", content=raw, headers=headers)
            assert 400 <= response.status_code < 500, (raw, response.status_code, response.text)

    def test_bodies_over_the_limit_get_413(self, server):
        big = json.dumps({"user_id": "x" * 2_000_000}).encode()
        assert (
            server.post(
                "/recommend", content=big, headers={"content-type": "application/json"}
            ).status_code
            == 413
        )

        def chunks():
            yield big[:1000]
            yield big[1000:]

        chunked = server.post(
            "/recommend", content=chunks(), headers={"content-type": "application/json"}
        )
        assert chunked.status_code == 413

    def test_concurrent_requests_share_runner_calls(self, server, trained):
        """32 clients at once each get their own answer, the one they get alone, while the entry
        service sends their queries to the batched runner in fewer calls (serving/coalesce.py)."""
        h, games = trained.histories, trained.artifacts.vocab.game_ids
        bodies = [
            {
                "user_id": f"c{i}",
                "time_played": {games[g]: 60.0 for g in h.game_positions[h.span(u)]},
            }
            for i, u in enumerate(trained.split.test.users[:32])
        ]
        alone = [server.post("/recommend", json=b).json()["recommendations"] for b in bodies]
        start = threading.Barrier(len(bodies))

        def post_at_once(body: dict) -> httpx.Response:
            start.wait()
            return server.post("/recommend", json=body)

        # A worker's only request skips the coalescer, so calls are shared only where requests
        # overlap at the server; on a loaded machine the client's threads may send one burst
        # spread out, so up to three bursts are tried.
        shared = []
        for _ in range(3):
            calls, queries = _runner_calls(server)
            with ThreadPoolExecutor(len(bodies)) as pool:
                together = list(pool.map(post_at_once, bodies))
            assert [r.status_code for r in together] == [200] * len(bodies)
            for response, expected in zip(together, alone, strict=True):
                got = response.json()["recommendations"]  # batched math: equal up to rounding
                assert [g["game_id"] for g in got] == [g["game_id"] for g in expected]
                np.testing.assert_allclose(
                    [g["score"] for g in got], [g["score"] for g in expected], rtol=1e-5
                )
            calls_after, queries_after = _runner_calls(server)
            assert queries_after - queries == len(bodies)
            shared.append(calls_after - calls)
            if shared[-1] < len(bodies):
                break
        assert min(shared) < len(bodies), shared

    def test_still_serves_after_bad_input(self, server):
        assert server.get("/readyz").status_code == 200
        assert server.post("/recommend", json=EXAMPLE).status_code == 200


def _runner_calls(server: httpx.Client) -> tuple[float, float]:
    """(calls, queries) from the entry service's /metrics: its calls to the runner so far."""
    totals = {"count": 0.0, "sum": 0.0}
    for line in server.get("/metrics").text.splitlines():
        for part in totals:
            if line.startswith(f"gamerec_runner_call_queries_{part}"):
                totals[part] += float(line.rsplit(" ", 1)[1])
    return totals["count"], totals["sum"]


def _bentoml(*args: str, env: dict[str, str], timeout: float = 120) -> str:
    """Run a `bentoml` command from the project root; its stdout, or the test fails."""
    done = subprocess.run(
        [BENTOML, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


@pytest.mark.slow
def test_bentoml_build_makes_a_bento_that_serves(trained, tmp_path):
    env = {**os.environ, "GAMEREC_MODEL_TAG": trained.tag, "BENTOML_DO_NOT_TRACK": "true"}
    built = _bentoml("build", "--output", "tag", env=env, timeout=600)
    bento_tag = built.splitlines()[-1].removeprefix("__tag__:")
    assert trained.tag in _bentoml("get", bento_tag, "-o", "json", env=env)  # pins the model
    bento_path = Path(_bentoml("get", bento_tag, "-o", "path", env=env))
    assert (bento_path / "env" / "docker" / "Dockerfile").is_file()

    with running_server([bento_tag]) as server:  # no model tag: the Bento's own model serves
        url = server.url
        response = httpx.post(f"{url}/recommend", json=EXAMPLE, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == trained.tag
