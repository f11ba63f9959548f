"""The training loop: examples without their targets, early stopping on validation users.

The retrieval task (candidates, logQ, full or sampled softmax) is `training/retrieval.py`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm import tqdm

from training import distributed
from training.config import FeatureConfig, TrainingSettings
from training.data.stream import PlayStream
from training.ease_start import start_from_ease, with_ease_start
from training.evaluate import EvalSet, Scorer, Split, ranking_metrics
from training.features import (
    EncodedUser,
    ItemBatch,
    Vocabulary,
    catalog_items,
    collate_users,
    encode_histories,
    game_genre_positions,
    history_weights,
    with_known,
)
from training.histories import Histories, genre_matrix, top_genres
from training.retrieval import RetrievalTask, TrainingBatch
from training.towers import TwoTower, output_dim, starts_from_ease


@dataclass
class TrainResult:
    towers: TwoTower
    best_epoch: int
    best_validation: float
    seconds: float
    loss_kind: str
    epochs: list[dict[str, float | None]] = field(default_factory=list)  # loss None: the start
    ease_start: dict[str, float] = field(default_factory=dict)  # EASE's fit, if it started


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


def played_catalog(
    games_table: pd.DataFrame,
    vocab: Vocabulary,
    histories: Histories,
    users: np.ndarray,
    cfg: FeatureConfig,
) -> ItemBatch:
    """The catalog's item-tower inputs; a game none of `users` played (a new game) is placed
    from its metadata alone, its id embedding untrained."""
    counts = histories.play_counts(users, len(vocab.game_ids))
    return catalog_with_plays(games_table, vocab, counts, cfg)


def catalog_with_plays(
    games_table: pd.DataFrame, vocab: Vocabulary, train_counts: np.ndarray, cfg: FeatureConfig
) -> ItemBatch:
    """`played_catalog` from the training players' plays per game."""
    return with_known(catalog_items(games_table, vocab, cfg), train_counts > 0)


@dataclass
class ExampleSampler:
    """Training batches: each user's games split at random into inputs and hidden targets.

    The user tower never sees the games it must predict, as at evaluation and serving time;
    hiding a random share of the history each epoch also denoises the input. A share of the
    examples also carries preferred genres, derived from the input games (what a player would
    tick), since requests may send them.
    """

    h: Histories
    users: np.ndarray
    genres_of_games: sp.csr_matrix
    s: TrainingSettings
    rng: np.random.Generator

    def __len__(self) -> int:
        return len(self.users)

    def epoch(self) -> np.ndarray:
        """The training users in a new random order."""
        return self.rng.permutation(self.users)

    def batches(self, n_users: int, batch_size: int) -> Iterator[TrainingBatch]:
        """An epoch: `n_users` of the training users in a new random order, in batches."""
        users = self.epoch()[:n_users]
        for start in range(0, len(users), batch_size):
            yield self.batch(users[start : start + batch_size])

    def batch(self, users: np.ndarray) -> TrainingBatch:
        """The users' input features and hidden targets, built for the whole batch at once."""
        n, lengths = len(users), self.h.lengths()[users]
        rows = np.repeat(np.arange(n), lengths)
        row_starts = np.cumsum(lengths) - lengths
        flat = self.h.flat_index(users)
        hidden = self.rng.random(len(flat)) < self.s.train.history_dropout
        hidden[row_starts + self.rng.integers(lengths)] = True  # at least one target a row
        kept = ~hidden
        games, minutes = self.h.game_positions[flat], self.h.minutes[flat]
        k_rows, k_games, k_minutes = rows[kept], games[kept], minutes[kept]
        with_genres = (self.rng.random(n) < self.s.features.genre_input_rate)[k_rows]
        genre_rows, genres = top_genres(
            k_rows[with_genres],
            k_games[with_genres],
            history_weights(k_minutes[with_genres], self.s.features),
            self.genres_of_games,
            n,
            self.s.features.preferred_genres,
        )
        inputs = encode_histories(
            k_rows,
            k_games,
            k_minutes,
            self.h.achievements[flat][kept],
            genre_rows,
            genres,
            n,
            self.s.features,
        )
        return TrainingBatch(
            users=inputs,
            input_rows=torch.from_numpy(k_rows),
            input_cols=torch.from_numpy(k_games),
            target_rows=torch.from_numpy(rows[hidden]),
            target_cols=torch.from_numpy(games[hidden]),
            target_minutes=minutes[hidden],
        )


@dataclass
class StreamedExampleSampler:
    """`ExampleSampler`'s batches of the training players a `PlayStream` reads (this rank's
    share of them), a buffer at a time."""

    stream: PlayStream
    ranks: distributed.Ranks
    genres_of_games: sp.csr_matrix
    s: TrainingSettings
    rng: np.random.Generator

    def __len__(self) -> int:
        return self.stream.n_players(self.ranks)

    def batches(self, n_users: int, batch_size: int) -> Iterator[TrainingBatch]:
        for buffer, users in self.stream.batches(self.rng, self.ranks, batch_size, n_users):
            yield ExampleSampler(buffer, users, self.genres_of_games, self.s, self.rng).batch(users)


def parameter_groups(towers: TwoTower, settings: TrainingSettings) -> list[dict[str, object]]:
    """The optimizer's parameters: the game tables that start from EASE learn at
    `train.learning_rate_from_ease` (at the random start's rate, they leave EASE's ranking
    behind in a few epochs); every other weight, the metadata that places new games and the
    biases among them, starts at random and learns at `train.learning_rate`."""
    if not starts_from_ease(towers.cfg):
        return [{"params": list(towers.parameters())}]
    started = [towers.user_games.weight, towers.item_ids.weight]
    others = [p for p in towers.parameters() if all(p is not s for s in started)]
    return [
        {"params": started, "lr": settings.train.learning_rate_from_ease},
        {"params": others},
    ]


def train_two_tower(
    histories: Histories,
    split: Split,
    vocab: Vocabulary,
    games_table: pd.DataFrame,
    settings: TrainingSettings,
    progress: bool = True,
    stream: PlayStream | None = None,
) -> TrainResult:
    """Train on the training users; keep the epoch with the best validation Recall@10.

    With `stream` (`training/data/stream.py`), the training players are read from it in
    batches, and `histories` holds the held-out players only. In a distributed run
    (`training/distributed.py`) each rank trains on its shard of the players, and every rank
    ends with the same weights."""
    ranks = distributed.current()
    progress = progress and ranks.is_main
    settings = with_ease_start(settings, len(vocab.game_ids), stream is not None)
    if stream is None:
        train_counts = histories.play_counts(split.train_users, len(vocab.game_ids))
    else:
        train_counts = stream.train_counts
    items = catalog_with_plays(games_table, vocab, train_counts, settings.features)
    rng = seed_everything(settings.train.seed, settings.train.threads)
    if ranks.world > 1:  # the same initial weights (seeded above), different examples
        rng = np.random.default_rng([settings.train.seed, ranks.rank])
    towers = TwoTower(len(vocab.game_ids), len(vocab.genres), len(vocab.tags), settings.model)
    started = time.perf_counter()
    from_ease = starts_from_ease(settings.model)
    ease_start = {}
    if from_ease and ranks.is_main:  # the other ranks get rank 0's weights when DDP wraps them
        ease_start = start_from_ease(towers, histories, split, items, games_table, settings)
    genres_of_games = genre_matrix(game_genre_positions(games_table, vocab), len(vocab.genres))
    if stream is None:
        train_users = split.train_users[histories.lengths()[split.train_users] > 0]
        sampler = ExampleSampler(
            histories, distributed.shard(train_users, ranks), genres_of_games, settings, rng
        )
    else:
        sampler = StreamedExampleSampler(stream, ranks, genres_of_games, settings, rng)
    task = RetrievalTask(settings, items, train_counts, rng)
    model = distributed.wrap(towers)
    optimizer = torch.optim.AdamW(
        parameter_groups(towers, settings),
        lr=settings.train.learning_rate,
        weight_decay=settings.train.weight_decay,
        # One fused kernel over all parameters: AdamW's step over 51M parameters (100,000
        # games' id tables) took 0.064 s instead of 0.54 s with the default (docs/scale.md).
        fused=True,
    )
    schedule = None
    if settings.train.lr_schedule == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.train.epochs)
    result = TrainResult(
        towers,
        best_epoch=-1,
        best_validation=-1.0,
        seconds=0.0,
        loss_kind=task.kind,
        ease_start=ease_start,
    )
    best_state = None
    patience = settings.train.patience_from_ease if from_ease else settings.train.patience

    def validate(epoch: int, loss: float | None) -> bool:
        """Record the epoch, keep the weights if best on validation; False: time to stop."""
        nonlocal best_state
        recall = 0.0
        if ranks.is_main:
            scorer = tower_scorer(towers, histories, split.validation, items, settings)
            recall = ranking_metrics(scorer, histories, split.validation, [10])["recall@10"]
        recall = distributed.from_main(recall)  # every rank stops at the same epoch
        result.epochs.append({"epoch": epoch, "loss": loss, "val_recall@10": recall})
        if progress:
            tqdm.write(f"epoch {epoch:3d}  loss {loss:.4f}  val Recall@10 {recall:.4f}")
        if recall > result.best_validation:
            result.best_validation, result.best_epoch = recall, epoch
            best_state = copy.deepcopy(towers.state_dict())
        return epoch - result.best_epoch < patience

    # train.batch_size is the global batch: each of the ranks takes its share of it.
    bs = max(1, settings.train.batch_size // ranks.world)
    per_epoch = distributed.common_length(len(sampler))
    if from_ease:  # epoch 0, the start itself: kept where no training step improves on it
        validate(0, None)
    for epoch in range(1, settings.train.epochs + 1):
        towers.train()
        losses = []
        bar = tqdm(
            sampler.batches(per_epoch, bs),
            total=-(-per_epoch // bs),
            desc=f"epoch {epoch}",
            disable=not progress,
            leave=False,
            unit="batch",
        )
        for batch in bar:
            candidates = task.candidates(batch)
            user_emb, item_emb = model(batch.users, candidates.items)
            loss = task.loss(user_emb, item_emb, batch, candidates)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        if schedule is not None:
            schedule.step()
        if not validate(epoch, float(np.mean(losses))):
            break
    if best_state is not None:
        towers.load_state_dict(best_state)
    towers.eval()
    result.seconds = time.perf_counter() - started
    return result
