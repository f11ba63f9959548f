"""POST /admin/reload on a real server under load: switching model versions fails no request,
and with two entry workers the reload reaches both."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import bentoml
import faiss
import httpx
import psutil
import pytest

from serving.recommender import Recommender
from tests.conftest import quick_settings
from tests.servers import Load, Server, running_server, service_config, worker_pids
from training.data.io import write_dataset
from training.data.synthetic import generate
from training.features import UserRecord
from training.pipeline import run
from training.store import load_model, save_model

TOKEN = "reload-test-token-0123456789abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}
BODY = {"user_id": "u", "time_played": {"g_1": 60.0, "g_2": 30.0, "g_3": 5.0}, "top_k": 10}
CLIENTS = 3
REACHES_EVERY_WORKER_S = 5.0  # the bound of a reload's reach (issue 16)


@pytest.fixture(scope="module")
def running(trained, tmp_path_factory) -> Iterator[Server]:
    """Two entry workers (the runner in each) serving the newest model (no GAMEREC_MODEL_TAG:
    a reload without a tag takes the newest again), with an admin token: a reload one worker
    receives must reach the other.

    The newest model is a copy of `trained`, saved now: other tests in this process may have
    saved newer models (on the Steam data, where BODY's games are unknown)."""
    first = save_model(load_model(trained.tag))
    env = {
        "GAMEREC_ADMIN_TOKEN": TOKEN,
        **service_config(tmp_path_factory.mktemp("reload"), placement="in_process", workers=2),
    }
    with running_server(["service:GameRec"], env=env) as server:
        # /readyz came from one worker: both must have loaded the newest model before the
        # module saves newer ones.
        models = _models_by_worker(server.url, seconds=0)
        assert len(models) == 2 and all(m == {first} for m in models.values()), models
        yield server
    bentoml.models.delete(first)


@pytest.fixture(scope="module")
def server(running: Server) -> httpx.Client:
    return httpx.Client(base_url=running.url, timeout=60)


@pytest.fixture(scope="module")
def broken_tag(server, trained):
    """A model version in the store whose index does not fit its towers; deleted afterwards."""
    tag = save_model(load_model(trained.tag))
    faiss.write_index(faiss.IndexFlatIP(8), str(Path(bentoml.models.get(tag).path) / "index.faiss"))
    yield tag
    bentoml.models.delete(tag)


@pytest.fixture(scope="module")
def new_version(broken_tag, tmp_path_factory) -> str:
    """A second model trained now, after the server started, on another catalog."""
    out = tmp_path_factory.mktemp("processed-v2")
    interactions, games = generate(n_users=1500, n_games=300, seed=11)
    write_dataset(interactions, games, out, name="synthetic-v2")
    return run(quick_settings(out), progress=False, save=True).tag


def _expected(tag: str) -> list[str]:
    """What the model `tag` recommends for BODY, computed here without the service."""
    recommender = Recommender.from_store(tag)
    ranked = recommender.recommend([UserRecord(time_played=BODY["time_played"])], BODY["top_k"])
    return [recommender.artifacts.vocab.game_ids[g] for g in ranked[0].positions]


Answered = tuple[float, int, str, list[str]]  # (time.monotonic(), status, model, games)


def _drive(base_url: str, stop: threading.Event, answers: list[Answered]) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        while not stop.is_set():
            response = client.post("/recommend", json=BODY)
            body = response.json() if response.status_code == 200 else {}
            games = [r["game_id"] for r in body.get("recommendations", [])]
            model = body.get("model", response.text)
            answers.append((time.monotonic(), response.status_code, model, games))
            time.sleep(0.01)


@pytest.mark.slow
def test_reload_under_load_reaches_every_worker_and_fails_no_request(
    server, broken_tag, new_version
):
    """Bad reloads change nothing; a good one, received by one of the two workers, is served
    by both within REACHES_EVERY_WORKER_S; no request fails and no client goes back."""
    old, url = server.get("/info").json()["model"], str(server.base_url)
    expected = {old: _expected(old), new_version: _expected(new_version)}
    assert expected[old] != expected[new_version]
    stop = threading.Event()
    answers: list[list[Answered]] = [[] for _ in range(CLIENTS)]
    clients = [threading.Thread(target=_drive, args=(url, stop, out)) for out in answers]
    for client in clients:
        client.start()
    try:
        refused = [
            server.post("/admin/reload"),
            server.post("/admin/reload", headers={"authorization": f"Bearer {TOKEN[:-1]}x"}),
            server.post("/admin/reload", headers={"authorization": f"Bearer {TOKEN}0"}),
            server.post("/admin/reload", headers={"authorization": TOKEN}),
        ]
        assert [r.status_code for r in refused] == [401] * 4, [r.text for r in refused]
        unknown = server.post("/admin/reload", json={"tag": "gamerec:nosuchversion"}, headers=AUTH)
        assert unknown.status_code == 404 and "not in the BentoML model store" in unknown.text
        broken = server.post("/admin/reload", json={"tag": broken_tag}, headers=AUTH)
        assert broken.status_code == 400 and "index.faiss has dimension 8" in broken.text
        before = _models_by_worker(url, seconds=3)  # nothing changed, on either worker
        switched = server.post("/admin/reload", headers=AUTH)  # no tag: the newest model
        reached_by = time.monotonic() + REACHES_EVERY_WORKER_S
        assert switched.status_code == 200, switched.text
        assert switched.json() == {"model": new_version, "previous": old}
        time.sleep(REACHES_EVERY_WORKER_S)
        after = _models_by_worker(url, seconds=3)
    finally:
        stop.set()
        for client in clients:
            client.join()

    assert len(before) == 2 and all(models == {old} for models in before.values()), before
    assert after == {pid: {new_version} for pid in before}
    every = [a for out in answers for a in out]
    assert [a for a in every if a[1] != 200] == []
    for out in answers:
        assert out[0][2] == old and out[-1][2] == new_version
    # A client whose connection moves to the other worker (fix 10) may meet the old version
    # until the reload reached it, never later.
    assert {model for at, _, model, _ in every if at > reached_by} == {new_version}
    for _, _, model, games in every:  # encoded, searched and shaped by one and the same version
        assert games == expected[model]
    print(f"\n{len(every)} requests, none failed; both workers on the new model within 5 s")
    back = server.post("/admin/reload", json={"tag": old}, headers=AUTH)
    assert back.json() == {"model": old, "previous": new_version}


def _models_by_worker(url: str, seconds: float, workers: int = 2) -> dict[int, set[str]]:
    """GET /info on a fresh connection each time for `seconds`, and on until `workers` worker
    processes answered (at most 20 s: a new connection lands on either worker, mostly the
    idler one): the models each named."""
    seen: dict[int, set[str]] = {}
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds or (
        len(seen) < workers and elapsed < 20
    ):
        info = httpx.get(f"{url}/info", timeout=30).json()
        seen.setdefault(info["worker_pid"], set()).add(info["model"])
        time.sleep(0.05)
    return seen


@pytest.mark.slow
def test_connections_spread_evenly_over_the_workers(running: Server):
    """8 keep-alive clients that connect at once end up about 4 and 4 on the two workers,
    wherever the shared socket first put them (fix 10). The module's own client may hold a
    ninth connection."""
    workers = worker_pids(running.pid, "GameRec")
    port = int(running.url.rsplit(":", 1)[1])
    with Load(running.url, BODY, clients=8) as load:
        time.sleep(4)  # some balance intervals (0.5 s) and reconnections
        held = [_connections_to(pid, port) for pid in workers]
    assert sum(held) >= 8 and max(held) - min(held) <= 2, held
    assert [a for a in load.answers if a.status != 200] == []


def _connections_to(pid: int, port: int) -> int:
    connections = psutil.Process(pid).net_connections("tcp")
    return sum(c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port for c in connections)
