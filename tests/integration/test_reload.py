"""POST /admin/reload on a real server under load: switching model versions fails no request,
and with two entry workers the reload reaches both."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import bentoml
import faiss
import httpx
import pytest

from serving.recommender import Recommender
from tests.conftest import quick_settings
from tests.servers import running_server, service_config
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
def server(trained, tmp_path_factory):
    """Two entry workers (the runner in each) serving the newest model (no GAMEREC_MODEL_TAG:
    a reload without a tag takes the newest again), with an admin token: a reload one worker
    receives must reach the other."""
    env = {
        "GAMEREC_ADMIN_TOKEN": TOKEN,
        **service_config(tmp_path_factory.mktemp("reload"), placement="in_process", workers=2),
    }
    with running_server(["service:GameRec"], env=env) as running:
        yield httpx.Client(base_url=running.url, timeout=60)


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


def _drive(base_url: str, stop: threading.Event, answers: list[tuple[int, str, list[str]]]) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        while not stop.is_set():
            response = client.post("/recommend", json=BODY)
            body = response.json() if response.status_code == 200 else {}
            games = [r["game_id"] for r in body.get("recommendations", [])]
            answers.append((response.status_code, body.get("model", response.text), games))
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
    answers: list[list[tuple[int, str, list[str]]]] = [[] for _ in range(CLIENTS)]
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
    assert [a for a in every if a[0] != 200] == []
    for out in answers:
        models = [model for _, model, _ in out]
        assert models[0] == old and models[-1] == new_version
        assert set(models[models.index(new_version) :]) == {new_version}  # never back
    for _, model, games in every:  # encoded, searched and shaped by one and the same version
        assert games == expected[model]
    print(f"\n{len(every)} requests, none failed; both workers on the new model within 5 s")
    back = server.post("/admin/reload", json={"tag": old}, headers=AUTH)
    assert back.json() == {"model": old, "previous": new_version}


def _models_by_worker(url: str, seconds: float) -> dict[int, set[str]]:
    """GET /info on a fresh connection each time for `seconds`: the models each worker process
    named (a new connection may land on either worker)."""
    seen: dict[int, set[str]] = {}
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        info = httpx.get(f"{url}/info", timeout=30).json()
        seen.setdefault(info["worker_pid"], set()).add(info["model"])
        time.sleep(0.05)
    return seen
