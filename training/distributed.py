"""Training on several processes with PyTorch's own engine (torch.distributed + DDP).

`gamerec train --nproc N` starts N processes on this machine; under `torchrun` (which sets
RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT) each process is one rank of a run that may
span several nodes:

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \
        -m training.cli train

Every rank reads the same data and makes the same seeded split; the training players are
sharded by rank; DistributedDataParallel averages the gradients, so every rank holds the same
weights after each step. Early stopping follows rank 0's validation score, broadcast to all.
Only rank 0 evaluates, builds the index and saves the model. Backend: gloo, since the training
loop runs on CPU (NCCL needs the towers and batches on the GPU, which the loop does not do yet).

Sampled softmax (large catalogs) stays right across ranks without gathering candidates: each
rank scores its own batch against its own candidates, with the logQ correction of how those
candidates were drawn (its local batch), so each rank's loss is the sampled-softmax estimate of
its shard, and averaging the gradients averages unbiased estimates.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> Ranks:
    """This process's rank and the number of ranks (0 of 1 outside a distributed run)."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks(0, 1)


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_environment() -> Ranks:
    """Join the process group that `torchrun` (or `run_on`) described in the environment."""
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return current()


def run_on(nproc: int, fn: Callable[..., Any], *args: Any) -> None:
    """`fn(*args)` on `nproc` local processes, each a rank of one process group."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    mp.spawn(_rank_main, args=(nproc, fn, args), nprocs=nproc, join=True)


def _rank_main(rank: int, nproc: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc)})
    init_from_environment()
    try:
        fn(*args)
    finally:
        leave()


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wrap(model: nn.Module) -> nn.Module:
    """The model as each rank trains it: DDP when there are several ranks."""
    if current().world == 1:
        return model
    # Switched-off inputs (e.g. `model.user_genres: false`) leave parameters without gradients.
    return nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)


def shard(users: np.ndarray, ranks: Ranks) -> np.ndarray:
    """This rank's share of the training players."""
    return users[ranks.rank :: ranks.world]


def common_length(n: int) -> int:
    """The fewest players any rank has: every rank runs the same number of steps an epoch
    (a rank with one step more would wait forever for the others' gradients)."""
    if current().world == 1:
        return n
    length = torch.tensor([n])
    dist.all_reduce(length, op=dist.ReduceOp.MIN)
    return int(length.item())


def from_main(value: float) -> float:
    """Rank 0's value, on every rank."""
    if current().world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
