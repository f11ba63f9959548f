"""Inference: request-shaped records -> user tower -> FAISS top-k; and the versions loaded."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from index import search
from training.features import EncodedUser, UserRecord, collate_users, encode_record
from training.store import ModelArtifacts, load_model


@dataclass(frozen=True)
class Ranked:
    """Top games for one user: catalog positions and their scores, best first."""

    positions: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class RankQuery:
    """One user's work for the batched runner: features encoded by the model `model_tag`, the
    catalog positions never to recommend, and how many games to find."""

    user: EncodedUser
    exclude: set[int]
    k: int
    model_tag: str


class Recommender:
    """The served model: the user tower and the index of item embeddings."""

    def __init__(self, artifacts: ModelArtifacts) -> None:
        self.artifacts = artifacts
        self.towers = artifacts.towers.eval()

    @classmethod
    def from_store(cls, tag: str) -> Recommender:
        return cls(load_model(tag))

    @property
    def search_ms(self) -> float:
        """One query's search, in CPU milliseconds, as measured when the index was built
        (infinite for a model stored before that was measured)."""
        return float(self.artifacts.metrics["index"].get("query_cpu_ms", math.inf))

    def encode(self, records: list[UserRecord]) -> list[EncodedUser]:
        features = self.artifacts.settings.features
        return [encode_record(r, self.artifacts.vocab, features) for r in records]

    @torch.inference_mode()
    def embed(self, users: list[EncodedUser]) -> np.ndarray:
        """User embeddings for a batch, in one pass of the user tower."""
        return self.towers.user_embed(collate_users(users)).numpy()

    def top_k(
        self, users: list[EncodedUser], k: int, exclude: list[set[int]] | None = None
    ) -> list[Ranked]:
        """One batched FAISS search; each user's played games (and `exclude`) never come back."""
        if not users:
            return []
        played = [set(u.game_positions.tolist()) for u in users]
        if exclude is not None:
            played = [p | e for p, e in zip(played, exclude, strict=True)]
        scores, ids = search(self.artifacts.index, self.embed(users), k, exclude=played)
        return [
            Ranked(positions=i[i >= 0], scores=s[i >= 0]) for s, i in zip(scores, ids, strict=True)
        ]

    def recommend(self, records: list[UserRecord], k: int) -> list[Ranked]:
        return self.top_k(self.encode(records), k)

    def similar(self, position: int, k: int) -> Ranked:
        """The games whose vectors are most similar (cosine) to a game's, itself excluded:
        one exact pass over the catalog's unit-norm vectors."""
        vectors = self.artifacts.game_vectors
        scores = vectors @ vectors[position]
        scores[position] = -np.inf
        k = min(k, len(scores) - 1)
        top = np.argpartition(-scores, k - 1)[:k] if k > 0 else np.zeros(0, np.int64)
        top = top[np.argsort(-scores[top], kind="stable")]
        return Ranked(positions=top.astype(np.int64), scores=scores[top].astype(np.float32))


class ModelVersions:
    """Recommenders by model tag ("gamerec:<version>"), the `keep` most recently loaded.

    While a service switches versions, requests encoded with the previous one still find it. A tag
    not loaded yet is loaded from the store on first use, outside the lock, so that serving the
    loaded versions goes on meanwhile.
    """

    def __init__(self, load: Callable[[str], Recommender], keep: int) -> None:
        self._load, self._keep = load, keep
        self._loaded: dict[str, Recommender] = {}
        self._lock = threading.Lock()

    def loaded(self, tag: str) -> Recommender | None:
        """The recommender of `tag` if it is loaded already (nothing is loaded here)."""
        with self._lock:
            return self._loaded.get(tag)

    def get(self, tag: str) -> Recommender:
        """The recommender of `tag`; an alias such as "gamerec:latest" is resolved, not kept."""
        with self._lock:
            found = self._loaded.get(tag)
        if found is not None:
            return found
        loaded = self._load(tag)
        with self._lock:
            found = self._loaded.setdefault(loaded.artifacts.tag, loaded)
            while len(self._loaded) > self._keep:
                del self._loaded[next(iter(self._loaded))]  # the oldest
        return found
