"""Training settings, validated by pydantic, and the loading of `configs/*.yaml`.

Each setting's value lives in one place: the YAML file. The models here declare types, bounds
and meanings, and no defaults, so a file that leaves a setting out is refused by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from index.config import IndexConfig

_M = TypeVar("_M", bound=BaseModel)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    processed_dir: Path
    streaming: Literal["auto", "always", "never"] = Field(
        description="read the interactions in batches of row groups instead of whole "
        "(training/data/stream.py); auto: when there are more than `stream_above_plays`"
    )
    stream_above_plays: int = Field(ge=0, description="`streaming: auto` streams above this")
    stream_buffer_plays: int = Field(
        ge=1, description="plays a streamed epoch reads and shuffles together"
    )


class SplitConfig(Strict):
    seed: int
    val_users: float = Field(gt=0, lt=0.5, description="fraction of eligible users")
    test_users: float = Field(gt=0, lt=0.5, description="fraction of eligible users")
    min_games: int = Field(ge=2, description="users with fewer games are never held out")
    holdout_fraction: float = Field(
        gt=0, lt=1, description="share of a held-out user's games that are targets"
    )
    max_eval_users: int = Field(ge=10, description="cap on validation and test users each")


class FeatureConfig(Strict):
    history_weight: Literal["log1p", "binary", "power"] = Field(
        description="how play minutes weight a played game: 1 + log1p(minutes), 1, or "
        "(1 + minutes) ** `history_power`"
    )
    history_power: float = Field(ge=0, description="`power` weights' exponent")
    history_norm: Literal["mean", "l2"] = Field(
        description="history weights scaled to sum 1 (mean) or to unit L2 norm"
    )
    max_history: int = Field(ge=1, description="most-played games kept from a history")
    preferred_genres: int = Field(ge=0, description="genres derived from a history in training")
    genre_input_rate: float = Field(
        ge=0, le=1, description="share of training examples given genres"
    )
    max_item_tags: int = Field(ge=0)


class SideRowsConfig(Strict):
    """Rows added to the play matrix a start from EASE is fitted to: each one 'plays' the
    games that share a genre, tag, developer or title word, with its weight (0: none)."""

    genres_and_tags: float = Field(ge=0, description="weight of a genre's or a tag's row")
    developers: float = Field(ge=0, description="weight of a developer's row")
    title_words: float = Field(ge=0, description="weight of a title word's row")
    title_word_max_games: int = Field(
        ge=2, description="a title word names a series if 2 to this many games share it"
    )


class ModelConfig(Strict):
    tower: Literal["mlp", "additive"] = Field(
        description="mlp: bags through an MLP; additive: linear sums (training/towers.py)"
    )
    scoring: Literal["cosine", "dot_bias"] = Field(
        description="cosine: unit-norm outputs; dot_bias: raw outputs and a per-game bias"
    )
    user_genres: bool = Field(description="the preferred genres are an input of the user tower")
    user_counts: bool = Field(description="counts (games, minutes, achievements) are an input")
    item_metadata: bool = Field(description="genres and tags are inputs of the item tower")
    metadata_for_played: bool = Field(
        description="a game with training plays adds its genres and tags to its id embedding "
        "(true), or is its id embedding alone (false: the metadata places only new games)"
    )
    embedding_dim: int = Field(ge=4)
    start_from_ease: bool = Field(
        description="additive dot_bias towers: the game tables start at EASE's factors "
        "(training/ease_start.py), where EASE can be fitted; false: a random start",
    )
    embedding_dim_from_ease: int = Field(
        ge=4,
        description="the embedding's width (and EASE's rank) for towers that start from EASE, "
        "in place of `embedding_dim`",
    )
    ease_init_scale: float = Field(
        gt=0, description="EASE's factors are multiplied by its square root, each"
    )
    start_dropouts: list[Annotated[float, Field(ge=0, lt=1)]] = Field(
        min_length=1,
        description="towers that start from EASE: the linear model they start at is chosen on "
        "the validation players among EASE (0) and DLAE, the linear autoencoder, with these "
        "input dropouts, each at every λ of `eval.ease_lambdas` (training/ease_start.py)",
    )
    metadata_ridge: float = Field(
        ge=0,
        description="towers that start from EASE: the genre and tag tables start at the ridge "
        "regression (this λ) of the played games' started vectors on their genres and tags, "
        "which places new games; 0: a random start",
    )
    start_side_rows: SideRowsConfig = Field(
        description="towers that start from EASE: the games' metadata joins the play matrix "
        "that start is fitted to, as extra rows (collective EASE, training/ease_start.py)"
    )
    id_dim: int = Field(ge=4)
    hidden_dims: list[int]
    dropout: float = Field(ge=0, lt=1)


class LossConfig(Strict):
    kind: Literal["auto", "full", "sampled"]
    full_softmax_max_items: int = Field(
        ge=1, description="`auto` picks full softmax up to here, sampled above"
    )
    temperature: float = Field(gt=0)
    uniform_negatives: int = Field(
        ge=0, description="sampled: games drawn uniformly per batch on top of in-batch"
    )
    logq_correction: float = Field(ge=0, description="sampled: strength of the logQ correction")
    target_weight: Literal["binary", "log1p"] = Field(
        description="full: hidden games weighted equally or by log1p(minutes)"
    )
    kept_weight: float = Field(
        ge=0,
        description="full: weight of the games left in the input as targets too; 0 masks them "
        "out of the softmax (predict only the hidden games)",
    )
    unplayed_negatives: bool = Field(
        description="games no training player played are negatives too (true), or are left "
        "out of the softmax (false: they are new games, placed by their metadata)"
    )


class TrainConfig(Strict):
    seed: int
    threads: int = Field(ge=1)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=2, description="examples a step, over all ranks together")
    learning_rate: float = Field(gt=0)
    learning_rate_from_ease: float = Field(
        gt=0, description="the learning rate of towers that start from EASE (model.start_from_ease)"
    )
    lr_schedule: Literal["constant", "cosine"] = Field(
        description="cosine: anneal to zero over `epochs`"
    )
    weight_decay: float = Field(ge=0)
    history_dropout: float = Field(
        gt=0, lt=1, description="share of a user's games hidden from the input as targets"
    )
    patience: int = Field(ge=1, description="epochs without validation gain before stopping")
    patience_from_ease: int = Field(
        ge=1, description="`patience` for towers that start from EASE (model.start_from_ease)"
    )
    item_id_dropout: float = Field(
        ge=0,
        lt=1,
        description="share of games whose id embedding a training batch drops, so that the "
        "item tower learns to place a game from its genres and tags alone (new games)",
    )


class EvalConfig(Strict):
    ks: list[int]
    ease_lambdas: list[float]
    ease_max_games: int = Field(
        ge=1, description="EASE inverts a dense games x games matrix: skipped above"
    )

    @model_validator(mode="after")
    def _needs_10(self) -> EvalConfig:
        if 10 not in self.ks:
            raise ValueError("eval.ks must contain 10: early stopping uses Recall@10")
        return self


class TrainingSettings(Strict):
    model_name: str
    data: DataConfig
    split: SplitConfig
    features: FeatureConfig
    model: ModelConfig
    loss: LossConfig
    train: TrainConfig
    eval: EvalConfig
    index: IndexConfig

    @model_validator(mode="after")
    def _pq_divides_dim(self) -> TrainingSettings:
        if self.index.type == "ivfpq" and self.model.embedding_dim % self.index.pq_m:
            raise ValueError(
                f"index.pq_m={self.index.pq_m} must divide "
                f"model.embedding_dim={self.model.embedding_dim}"
            )
        return self


class ConfigError(ValueError):
    """A config file that is missing, not YAML, or not valid; or a bad override."""


def load_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def validate(cls: type[_M], raw: dict, source: Path | str) -> _M:
    """`raw` as a `cls`; a problem raises ConfigError naming the source and each field."""
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"{source}: {problems}") from err


def parse_override(text: str) -> tuple[str, Any]:
    """`section.field=value` (the value read as YAML) as a (key, value) pair."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"an override must look like section.field=value, got {text!r}")
    return key, yaml.safe_load(value)


def with_overrides(settings: _M, overrides: dict[str, Any]) -> _M:
    """The settings with dotted overrides applied, validated like the config file."""
    data = settings.model_dump()
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node = data
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            raise ConfigError(f"unknown setting {key!r}")
        node[leaf] = value
    return validate(type(settings), data, "overrides")


def load_training_config(
    path: Path | str | None = None, overrides: dict[str, Any] | None = None
) -> TrainingSettings:
    """`configs/training.yaml` (or `path`), with dotted `overrides` on top."""
    path = Path(path) if path else CONFIG_DIR / "training.yaml"
    settings = validate(TrainingSettings, load_yaml(path), path)
    return with_overrides(settings, overrides) if overrides else settings
