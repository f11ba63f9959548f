"""Where the batched runner (user tower + FAISS top-k) runs, and how many entry workers serve:
settled once per process, when `service.py` is imported, from `configs/service.yaml` and the
served model's catalog size, so that every process of a server settles it alike.

- `embedder`: a service of its own (`bentoml.depends`), one process that batches the calls of
  every entry worker; each request crosses two processes.
- `in_process`: each entry worker's coalescer runs the same batched call on its own copy of the
  model in a worker thread; no second process, no hop.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from serving.settings import Placement, ServiceSettings
from training.store import ModelNotFound, get_model

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def runner_placement(settings: ServiceSettings) -> Placement:
    """The configured placement; for `auto`, by the catalog size of the configured model. A
    model not in the store counts as a small catalog: importing `service.py` (for a check of
    the code, say) needs no model, and serving one stops at once with a message naming it."""
    if settings.placement != "auto":
        return settings.placement
    try:
        games = catalog_size(settings.model_tag)
    except ModelNotFound:
        games = 0
    return "in_process" if games <= settings.in_process_max_games else "embedder"


def catalog_size(tag: str) -> int:
    """Games in a stored model's catalog, from its metadata (nothing is loaded)."""
    return int(get_model(tag).info.metadata["n_games"])


def entry_workers(settings: ServiceSettings, placement: Placement) -> int:
    """The configured count; for `auto`, one process per core available, the Embedder's
    process included."""
    if settings.workers != "auto":
        return settings.workers
    cores = available_cores()
    return max(1, cores - 1) if placement == "embedder" else cores


def available_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container's CPU limit, which affinity does not show)."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, math.ceil(int(quota) / int(period))))
