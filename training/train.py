"""The training loop: examples without their target, early stopping on validation users."""

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
    Histories,
    ItemBatch,
    Vocabulary,
    catalog_items,
    collate_users,
    game_genre_positions,
    history_weights,
    top_genres,
)
from training.losses import catalog_log_probs, multinomial_nll, sampled_softmax
from training.towers import TwoTower


@dataclass
class TrainResult:
    model: TwoTower
    best_epoch: int
    best_validation: float
    seconds: float
    loss_kind: str
    epochs: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int, threads: int) -> np.random.Generator:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    return np.random.default_rng(seed)


def loss_kind(settings: TrainingSettings, n_games: int) -> str:
    kind = settings.loss.kind
    if kind == "auto":
        return "full" if n_games <= settings.loss.full_softmax_max_items else "sampled"
    return kind


@torch.no_grad()
def item_embeddings(model: TwoTower, items: ItemBatch) -> np.ndarray:
    model.eval()
    return model.item_embed(items).numpy()


@torch.no_grad()
def user_embeddings(model: TwoTower, users: list[EncodedUser], chunk: int = 4096) -> np.ndarray:
    model.eval()
    parts = [
        model.user_embed(collate_users(users[i : i + chunk])).numpy()
        for i in range(0, len(users), chunk)
    ]
    return (
        np.concatenate(parts)
        if parts
        else np.zeros((0, model.user_mlp[-1].out_features), np.float32)
    )


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
    model: TwoTower,
    histories: Histories,
    eval_set: EvalSet,
    items: ItemBatch,
    settings: TrainingSettings,
) -> Scorer:
    users = user_embeddings(model, eval_inputs(histories, eval_set, settings))
    catalog = item_embeddings(model, items)

    def score(_: EvalSet, rows: slice) -> np.ndarray:
        return users[rows] @ catalog.T

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

    def example(self, user: int) -> tuple[EncodedUser, np.ndarray, np.ndarray]:
        """The user's input features, and the catalog positions and minutes played of the
        hidden targets."""
        span = self.h.span(user)
        n = span.stop - span.start
        hidden = self.rng.random(n) < self.s.train.history_dropout
        hidden[self.rng.integers(n)] = True  # at least one target
        keep = np.flatnonzero(~hidden)
        genres = np.zeros(0, np.int64)
        if self.rng.random() < self.s.features.genre_input_rate:
            genres = top_genres(
                self.h.games[span][keep],
                history_weights(self.h.minutes[span][keep], self.s.features),
                self.game_genres,
                self.s.features.preferred_genres,
            )
        inputs = self.h.encode(user, keep, genres, self.s.features)
        return inputs, self.h.games[span][hidden], self.h.minutes[span][hidden]


def _batch_loss(
    model: TwoTower,
    sampler: ExampleSampler,
    users: np.ndarray,
    items: ItemBatch,
    kind: str,
    target_share: torch.Tensor | None,
) -> torch.Tensor:
    examples = [sampler.example(u) for u in users]
    user_emb = model.user_embed(collate_users([inputs for inputs, _, _ in examples]))
    temperature = sampler.s.loss.temperature
    if kind == "sampled":
        return _sampled_loss(
            model, sampler, user_emb, [t for _, t, _ in examples], items, target_share
        )
    target_rows, target_cols = _pairs([t for _, t, _ in examples])
    input_rows, input_cols = _pairs([inputs.games for inputs, _, _ in examples])
    log_probs = catalog_log_probs(
        user_emb, model.item_embed(items), temperature, input_rows, input_cols
    )
    weights = None
    if sampler.s.loss.target_weight == "log1p":  # longer-played hidden games count more
        minutes = np.concatenate([m for _, _, m in examples])
        weights = torch.from_numpy(1.0 + np.log1p(minutes)).float()
        weights = weights / weights.mean()
    return multinomial_nll(log_probs, target_rows, target_cols, weights)


def _sampled_loss(
    model: TwoTower,
    sampler: ExampleSampler,
    user_emb: torch.Tensor,
    targets: list[np.ndarray],
    items: ItemBatch,
    target_share: torch.Tensor | None,
) -> torch.Tensor:
    """One hidden game per row as its positive; the batch's other targets plus games drawn
    uniformly from the catalog as negatives, each corrected by log of its expected count."""
    rng, cfg, n_games = sampler.rng, sampler.s.loss, len(items.ids)
    picked = np.array([rng.choice(t) for t in targets])
    candidates = torch.from_numpy(
        np.concatenate([picked, rng.integers(n_games, size=cfg.uniform_negatives)])
    )
    log_q = None
    if target_share is not None:
        expected = len(picked) * target_share[candidates] + cfg.uniform_negatives / n_games
        log_q = cfg.logq_correction * torch.log(expected)
    item_emb = model.item_embed(items.select(candidates))
    return sampled_softmax(user_emb, item_emb, candidates, cfg.temperature, log_q)


def _pairs(per_row: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, game) index pairs from each row's list of games."""
    rows = np.repeat(np.arange(len(per_row)), [len(g) for g in per_row])
    return torch.from_numpy(rows), torch.from_numpy(np.concatenate(per_row).astype(np.int64))


def _target_share(histories: Histories, users: np.ndarray, n_games: int) -> torch.Tensor:
    """Each game's share of the training targets (smoothed), the in-batch sampling odds."""
    games = np.concatenate([histories.games[histories.span(u)] for u in users])
    counts = np.bincount(games, minlength=n_games).astype(np.float64) + 1.0
    return torch.from_numpy(counts / counts.sum()).float()


def train_two_tower(
    histories: Histories,
    split: Split,
    vocab: Vocabulary,
    games: pd.DataFrame,
    settings: TrainingSettings,
    progress: bool = True,
) -> TrainResult:
    """Train on the training users; keep the epoch with the best validation Recall@10."""
    items = catalog_items(games, vocab, settings.features)
    rng = seed_everything(settings.train.seed, settings.train.threads)
    kind = loss_kind(settings, len(vocab.games))
    model = TwoTower(len(vocab.games), len(vocab.genres), len(vocab.tags), settings.model)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=settings.train.learning_rate,
        weight_decay=settings.train.weight_decay,
    )
    train_users = split.train_users[histories.lengths()[split.train_users] > 0]
    sampler = ExampleSampler(
        histories, train_users, game_genre_positions(vocab, games), settings, rng
    )
    target_share = None
    if kind == "sampled" and settings.loss.logq_correction > 0:
        target_share = _target_share(histories, train_users, len(vocab.games))
    schedule = None
    if settings.train.lr_schedule == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.train.epochs)
    result = TrainResult(model, best_epoch=-1, best_validation=-1.0, seconds=0.0, loss_kind=kind)
    best_state, started, bs = None, time.perf_counter(), settings.train.batch_size
    for epoch in range(1, settings.train.epochs + 1):
        model.train()
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
            batch = users[start : start + bs]
            loss = _batch_loss(model, sampler, batch, items, kind, target_share)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        if schedule is not None:
            schedule.step()
        scorer = tower_scorer(model, histories, split.validation, items, settings)
        recall = ranking_metrics(scorer, histories, split.validation, [10])["recall@10"]
        result.epochs.append(
            {"epoch": epoch, "loss": float(np.mean(losses)), "val_recall@10": recall}
        )
        if progress:
            tqdm.write(f"epoch {epoch:3d}  loss {np.mean(losses):.4f}  val Recall@10 {recall:.4f}")
        if recall > result.best_validation:
            result.best_validation, result.best_epoch = recall, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - result.best_epoch >= settings.train.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - started
    return result
