"""Where the runner runs and how many entry workers serve (serving/placement.py), and the file
through which a reload reaches every entry worker (serving/reload.py)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from serving.placement import entry_workers, runner_placement
from serving.reload import WantedModel, follow
from serving.settings import load_service_settings

CORES = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("placement", "workers", "expected"),
    [("in_process", "auto", CORES), ("embedder", "auto", max(1, CORES - 1)), ("embedder", 3, 3)],
)
def test_workers_auto_is_one_process_per_core(placement, workers, expected):
    """The Embedder's process counts as one of them; a number is taken as it is."""
    settings = load_service_settings().model_copy(update={"workers": workers})
    assert entry_workers(settings, placement) == expected


def test_auto_placement_follows_the_catalog_size(monkeypatch):
    import serving.placement

    settings = load_service_settings().model_copy(
        update={"placement": "auto", "in_process_max_games": 10_000}
    )
    for games, expected in [(5_000, "in_process"), (10_000, "in_process"), (100_000, "embedder")]:
        monkeypatch.setattr(serving.placement, "catalog_size", lambda tag, n=games: n)
        assert runner_placement(settings) == expected
    fixed = settings.model_copy(update={"placement": "embedder"})
    assert runner_placement(fixed) == "embedder"  # the store is not even read


def test_wanted_model_file_round_trip(tmp_path: Path):
    wanted = WantedModel(tmp_path / "wanted")
    assert wanted.read() is None
    wanted.write("gamerec:v1")
    wanted.write("gamerec:v2")
    assert wanted.read() == "gamerec:v2"
    assert [p.name for p in tmp_path.iterdir()] == ["wanted"]  # no partial file left
    wanted.forget()
    assert wanted.read() is None
    assert WantedModel.of_this_worker().path == WantedModel.of_server(os.getppid()).path


def test_follow_switches_to_the_wanted_tag_and_skips_a_refused_one(tmp_path: Path):
    wanted = WantedModel(tmp_path / "wanted")
    served, attempts = ["gamerec:v1"], []

    async def switch(tag: str) -> None:
        attempts.append(tag)
        if tag == "gamerec:broken":
            raise ValueError("broken model")
        served[0] = tag

    async def scenario() -> None:
        task = asyncio.create_task(follow(wanted, lambda: served[0], switch, interval_s=0.01))
        for tag in ("gamerec:v2", "gamerec:broken", "gamerec:v3"):
            wanted.write(tag)
            await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(scenario())
    assert served == ["gamerec:v3"]
    assert attempts == ["gamerec:v2", "gamerec:broken", "gamerec:v3"]  # broken: tried once


def test_auto_workers_follow_a_container_cpu_limit(tmp_path):
    from serving.placement import available_cores

    cpu_max = tmp_path / "cpu.max"
    affinity = len(os.sched_getaffinity(0))
    cpu_max.write_text("max 100000\n")
    assert available_cores(cpu_max) == affinity
    cpu_max.write_text("150000 100000\n")  # a limit of 1.5 CPUs
    assert available_cores(cpu_max) == min(affinity, 2)
    cpu_max.write_text("50000 100000\n")
    assert available_cores(cpu_max) == 1
    assert available_cores(tmp_path / "absent") == affinity
