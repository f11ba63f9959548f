"""Every knob of training and serving, validated by pydantic and read from `configs/*.yaml`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

_M = TypeVar("_M", bound=BaseModel)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    processed_dir: Path = Path("data/processed")


class SplitConfig(_Strict):
    seed: int = 42
    val_users: float = Field(0.1, gt=0, lt=0.5, description="fraction of eligible users")
    test_users: float = Field(0.2, gt=0, lt=0.5, description="fraction of eligible users")
    min_games: int = Field(5, ge=2, description="users with fewer games are never held out")
    holdout_fraction: float = Field(
        0.2, gt=0, lt=1, description="share of a held-out user's games that are targets"
    )
    max_eval_users: int = Field(5000, ge=10, description="cap on validation and test users each")


class FeatureConfig(_Strict):
    history_weight: Literal["log1p", "binary"] = "binary"
    history_norm: Literal["mean", "l2"] = Field(
        "mean", description="history weights scaled to sum 1 (mean) or to unit L2 norm"
    )
    max_history: int = Field(1000, ge=1, description="most-played games kept from a history")
    preferred_genres: int = Field(
        3, ge=0, description="genres derived from a history during training"
    )
    genre_input_rate: float = Field(
        0.5, ge=0, le=1, description="share of training examples given genres"
    )
    max_item_tags: int = Field(20, ge=0)


class ModelConfig(_Strict):
    embedding_dim: int = Field(64, ge=4)
    id_dim: int = Field(64, ge=4)
    hidden_dims: list[int] = Field(default_factory=lambda: [256])
    dropout: float = Field(0.1, ge=0, lt=1)


class LossConfig(_Strict):
    kind: Literal["auto", "full", "sampled"] = "auto"
    full_softmax_max_items: int = Field(
        50_000, ge=1, description="`auto` picks full softmax up to here, sampled above"
    )
    temperature: float = Field(0.05, gt=0)
    uniform_negatives: int = Field(
        1024, ge=0, description="sampled: games drawn uniformly per batch on top of in-batch"
    )
    logq_correction: float = Field(
        1.0, ge=0, description="sampled: strength of the logQ correction"
    )
    target_weight: Literal["binary", "log1p"] = Field(
        "binary", description="full: hidden games weighted equally or by log1p(minutes)"
    )


class TrainConfig(_Strict):
    seed: int = 42
    threads: int = Field(2, ge=1)
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(512, ge=2)
    learning_rate: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="cosine: anneal to zero over `epochs`"
    )
    weight_decay: float = Field(0.0, ge=0)
    history_dropout: float = Field(
        0.5, gt=0, lt=1, description="share of a user's games hidden from the input as targets"
    )
    patience: int = Field(15, ge=1, description="epochs without validation gain before stopping")


class EvalConfig(_Strict):
    ks: list[int] = Field(default_factory=lambda: [10, 50])
    ease_lambdas: list[float] = Field(default_factory=lambda: [10, 50, 100, 250, 500, 1000, 2000])
    ease_max_games: int = Field(
        20_000, ge=1, description="EASE inverts a dense games x games matrix: skipped above"
    )

    @model_validator(mode="after")
    def _needs_10(self) -> EvalConfig:
        if 10 not in self.ks:
            raise ValueError("eval.ks must contain 10: early stopping uses Recall@10")
        return self


class IndexConfig(_Strict):
    type: Literal["flat", "ivf", "ivfpq", "hnsw"] = "flat"
    nlist: int = Field(0, ge=0, description="IVF lists; 0 picks about 4*sqrt(n)")
    nprobe: int = Field(16, ge=1)
    pq_m: int = Field(16, ge=1, description="PQ sub-quantizers; must divide embedding_dim")
    pq_bits: int = Field(8, ge=4, le=12)
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_search: int = Field(128, ge=8)
    hnsw_ef_construction: int = Field(200, ge=8)
    recall_queries: int = Field(
        2000, ge=10, description="queries used to measure recall against exact"
    )


class TrainingSettings(_Strict):
    model_name: str = "gamerec"
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    features: FeatureConfig = FeatureConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    index: IndexConfig = IndexConfig()

    @model_validator(mode="after")
    def _pq_divides_dim(self) -> TrainingSettings:
        if self.index.type == "ivfpq" and self.model.embedding_dim % self.index.pq_m:
            raise ValueError(
                f"index.pq_m={self.index.pq_m} must divide "
                f"model.embedding_dim={self.model.embedding_dim}"
            )
        return self


class ConfigError(ValueError):
    """A config file that is missing, not YAML, or not valid."""


def _load_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def _validate(cls: type[_M], raw: dict, path: Path) -> _M:
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"{path}: {problems}") from err


def load_training_config(path: Path | str | None = None) -> TrainingSettings:
    path = Path(path) if path else CONFIG_DIR / "training.yaml"
    return _validate(TrainingSettings, _load_yaml(path), path)


class BatchingConfig(_Strict):
    max_batch_size: int = Field(64, ge=1, description="users per call of the batched service")
    max_latency_ms: int = Field(
        1000, ge=1, description="BentoML answers 503 when it expects a batch to wait longer"
    )


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(1_048_576, ge=1024, description="larger bodies get 413 unread")
    max_history: int = Field(1000, ge=1, description="games in time_played or achievements")
    max_minutes: float = Field(
        1e8, gt=0, description="minutes played per game (1e8 is about 190 years)"
    )
    max_top_k: int = Field(100, ge=1)
    max_batch_requests: int = Field(100, ge=1, description="requests in one /recommend_batch")
    max_id_length: int = Field(256, ge=1, description="characters in a user, game or genre id")
    max_genres: int = Field(50, ge=0)


class EmbedderConfig(_Strict):
    """How the entry service calls the inner (Embedder) service, and rides out its restart."""

    max_calls_in_flight: int = Field(
        1, ge=1, description="calls out at once; queries waiting meanwhile go out together"
    )
    retry_s: float = Field(20.0, ge=0, description="retry a refused call for this long")
    retry_interval_s: float = Field(0.1, gt=0)
    probe_timeout_s: int = Field(2, ge=1, description="/readyz: the Embedder must answer in this")


class ServiceSettings(_Strict):
    model_tag: str = "gamerec:latest"
    workers: int = Field(1, ge=1, description="processes of the HTTP entry service")
    torch_threads: int = Field(1, ge=1)
    faiss_threads: int = Field(1, ge=1)
    trace_recommend: bool = Field(
        False, description="OpenTelemetry spans for /recommend and /recommend_batch"
    )
    batching: BatchingConfig = BatchingConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    limits: LimitsConfig = LimitsConfig()


def load_service_config(path: Path | str | None = None) -> ServiceSettings:
    path = Path(path) if path else CONFIG_DIR / "service.yaml"
    return _validate(ServiceSettings, _load_yaml(path), path)
