"""The training loop: examples without their targets, early stopping on validation users.

The retrieval task (candidates, logQ, full or sampled softmax) is `training/retrieval.py`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from training.config import TrainingSettings
from training.evaluate import EvalSet, Scorer, Split, ranking_metrics
from training.features import (
    EncodedUser,
    ItemBatch,
    Vocabulary,
    catalog_items,
    collate_users,
    game_genre_positions,
    history_weights,
)
from training.histories import Histories, top_genres
from training.retrieval import Example, RetrievalTask
from training.towers import TwoTower, output_dim


@dataclass
class TrainResult:
    towers: TwoTower
    best_epoch: int
    best_validation: float
    seconds: float
    loss_kind: str
    epochs: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int, threads: int) -> np.random.Generator:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    return np.random.default_rng(seed)


@torch.no_grad()
def item_embeddings(towers: TwoTower, items: ItemBatch) -> np.ndarray:
    towers.eval()
    return towers.item_embed(items).numpy()


@torch.no_grad()
def user_embeddings(towers: TwoTower, users: list[EncodedUser], chunk: int = 4096) -> np.ndarray:
    towers.eval()
    parts = [
        towers.user_embed(collate_users(users[i : i + chunk])).numpy()
        for i in range(0, len(users), chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, output_dim(towers.cfg)), np.float32)


def eval_inputs(
    histories: Histories, eval_set: EvalSet, settings: TrainingSettings
) -> list[EncodedUser]:
    """Held-out users as the service sees them: their input games, no genres."""
    no_genres = np.zeros(0, np.int64)
    return [
        histories.encode(u, keep, no_genres, settings.features)
        for u, keep in zip(eval_set.users, eval_set.inputs, strict=True)
    ]


def tower_scorer(
    towers: TwoTower,
    histories: Histories,
    eval_set: EvalSet,
    items: ItemBatch,
    settings: TrainingSettings,
) -> Scorer:
    users = user_embeddings(towers, eval_inputs(histories, eval_set, settings))
    games = item_embeddings(towers, items)

    def score(_: EvalSet, rows: slice) -> np.ndarray:
        return users[rows] @ games.T

    return score


class ExampleSampler:
    """Training examples: a user's games split at random into inputs and hidden targets.

    The user tower never sees the games it must predict, as at evaluation and serving time;
    hiding a random share of the history each epoch also denoises the input.
    """

    def __init__(
        self,
        histories: Histories,
        users: np.ndarray,
        game_genres: list[np.ndarray],
        settings: TrainingSettings,
        rng: np.random.Generator,
    ) -> None:
        self.h, self.users, self.game_genres = histories, users, game_genres
        self.s, self.rng = settings, rng

    def epoch(self) -> np.ndarray:
        """The training users in a new random order."""
        return self.rng.permutation(self.users)

    def example(self, user: int) -> Example:
        """The user's input features, and the hidden targets."""
        span = self.h.span(user)
        n = span.stop - span.start
        hidden = self.rng.random(n) < self.s.train.history_dropout
        hidden[self.rng.integers(n)] = True  # at least one target
        keep = np.flatnonzero(~hidden)
        genres = np.zeros(0, np.int64)
        if self.rng.random() < self.s.features.genre_input_rate:
            genres = top_genres(
                self.h.game_positions[span][keep],
                history_weights(self.h.minutes[span][keep], self.s.features),
                self.game_genres,
                self.s.features.preferred_genres,
            )
        inputs = self.h.encode(user, keep, genres, self.s.features)
        return Example(inputs, self.h.game_positions[span][hidden], self.h.minutes[span][hidden])


def train_two_tower(
    histories: Histories,
    split: Split,
    vocab: Vocabulary,
    games_table: pd.DataFrame,
    settings: TrainingSettings,
    progress: bool = True,
) -> TrainResult:
    """Train on the training users; keep the epoch with the best validation Recall@10."""
    items = catalog_items(games_table, vocab, settings.features)
    rng = seed_everything(settings.train.seed, settings.train.threads)
    towers = TwoTower(len(vocab.game_ids), len(vocab.genres), len(vocab.tags), settings.model)
    optimizer = torch.optim.AdamW(
        towers.parameters(),
        lr=settings.train.learning_rate,
        weight_decay=settings.train.weight_decay,
    )
    train_users = split.train_users[histories.lengths()[split.train_users] > 0]
    sampler = ExampleSampler(
        histories, train_users, game_genre_positions(games_table, vocab), settings, rng
    )
    task = RetrievalTask(settings, items, histories, train_users, rng)
    schedule = None
    if settings.train.lr_schedule == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.train.epochs)
    result = TrainResult(
        towers, best_epoch=-1, best_validation=-1.0, seconds=0.0, loss_kind=task.kind
    )
    best_state, started, bs = None, time.perf_counter(), settings.train.batch_size
    for epoch in range(1, settings.train.epochs + 1):
        towers.train()
        users = sampler.epoch()
        losses = []
        bar = tqdm(
            range(0, len(users), bs),
            desc=f"epoch {epoch}",
            disable=not progress,
            leave=False,
            unit="batch",
        )
        for start in bar:
            examples = [sampler.example(u) for u in users[start : start + bs]]
            user_emb = towers.user_embed(collate_users([e.inputs for e in examples]))
            loss = task.loss(towers, user_emb, examples)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        if schedule is not None:
            schedule.step()
        scorer = tower_scorer(towers, histories, split.validation, items, settings)
        recall = ranking_metrics(scorer, histories, split.validation, [10])["recall@10"]
        result.epochs.append(
            {"epoch": epoch, "loss": float(np.mean(losses)), "val_recall@10": recall}
        )
        if progress:
            tqdm.write(f"epoch {epoch:3d}  loss {np.mean(losses):.4f}  val Recall@10 {recall:.4f}")
        if recall > result.best_validation:
            result.best_validation, result.best_epoch = recall, epoch
            best_state = copy.deepcopy(towers.state_dict())
        elif epoch - result.best_epoch >= settings.train.patience:
            break
    if best_state is not None:
        towers.load_state_dict(best_state)
    towers.eval()
    result.seconds = time.perf_counter() - started
    return result
