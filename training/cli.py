"""The `gamerec` command: data import, training, index rebuilds and evaluation."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import asdict, replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TypeVar, get_args

import typer

from index import config as index_config
from index.config import IndexConfig
from training.config import (
    ConfigError,
    TrainingSettings,
    load_training_config,
    parse_override,
    with_overrides,
)
from training.schema import DataError

app = typer.Typer(
    help="GameRec: a two-tower game recommender.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Write a data set to data/processed/.", no_args_is_help=True)
app.add_typer(data_app, name="data")

OUT_HELP = "output directory [default: data.processed_dir of configs/training.yaml]"


# typer wants an Enum for a choice: the one list of index types is index/config.py's.
IndexType = StrEnum("IndexType", {name: name for name in get_args(index_config.IndexType)})


_F = TypeVar("_F", bound=Callable[..., object])


def clear_errors(func: _F) -> _F:
    """Known failures end with one line naming what is wrong, and exit code 2."""
    from training.store import ModelIntegrityError

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        # OSError: a file that cannot be read or written (missing, no permission, disk full).
        except (DataError, ConfigError, ModelIntegrityError, OSError, ValueError) as err:
            typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from err

    return wrapper  # type: ignore[return-value]


def _out_dir(out: Path | None) -> Path:
    return out or load_training_config().data.processed_dir


def _report(out_dir: Path, report: dict) -> None:
    typer.echo(f"wrote {out_dir}/interactions.parquet, games.parquet, dataset.json")
    typer.echo(json.dumps(report, indent=2, default=str))


@data_app.command("synth")
@clear_errors
def data_synth(
    users: Annotated[int, typer.Option(min=1, help="number of users")] = 20_000,
    games: Annotated[int, typer.Option(min=1, help="number of games")] = 5_000,
    seed: Annotated[int, typer.Option(help="random seed")] = 42,
    out: Annotated[Path | None, typer.Option(help=OUT_HELP)] = None,
) -> None:
    """Generate the seeded synthetic data set (the embedded default), written in pieces of
    players: memory stays bounded whatever the size (2,000,000 users: about 20M plays)."""
    from tqdm import tqdm

    from training.data.io import write_dataset_pieces
    from training.data.synthetic import USERS_PER_CHUNK, synthesize

    games_table, pieces = synthesize(n_users=users, n_games=games, seed=seed)
    n_pieces = -(-users // USERS_PER_CHUNK)
    pieces = tqdm(pieces, total=n_pieces, unit="piece", desc=f"pieces of {USERS_PER_CHUNK} players")
    report = {"users": users, "games": games, "seed": seed}
    out = _out_dir(out)
    write_dataset_pieces(pieces, games_table, out, name="synthetic", report=report)
    info = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    _report(out, {**report, "interactions": info["n_interactions"]})


@data_app.command("steam200k")
@clear_errors
def data_steam200k(
    plays: Annotated[Path, typer.Option(help="Steam play CSV (3-column or raw Kaggle form)")],
    games: Annotated[Path | None, typer.Option(help="UCSD steam games metadata (Parquet)")] = None,
    out: Annotated[Path | None, typer.Option(help=OUT_HELP)] = None,
) -> None:
    """Import the Steam 200k play data, joined to the UCSD game metadata by title."""
    from training.data.io import write_dataset
    from training.data.steam import import_steam200k

    interactions, games_table, report = import_steam200k(plays, games)
    out = _out_dir(out)
    write_dataset(interactions, games_table, out, name="steam200k", report=report)
    _report(out, report)


def _latest(model: str | None) -> str:
    """The tag asked for, or the newest version of the configured model."""
    return model or f"{load_training_config().model_name}:latest"


@app.command()
@clear_errors
def train(
    config: Annotated[Path, typer.Option(help="training config")] = Path("configs/training.yaml"),
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a setting: section.field=value (repeatable)"),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    nproc: Annotated[
        int,
        typer.Option(
            min=1,
            help="training processes on this machine (DistributedDataParallel), each with "
            "train.threads / nproc threads; under torchrun, one process per rank instead",
        ),
    ] = 1,
) -> None:
    """Train, evaluate against the baselines, build the index, save a new model version."""
    from training import distributed

    settings = load_training_config(config, dict(parse_override(t) for t in set_ or []))
    if distributed.under_torchrun():
        distributed.init_from_environment()
        try:
            _train_rank(settings, quiet)
        finally:
            distributed.leave()
    elif nproc > 1:
        threads = max(1, settings.train.threads // nproc)
        settings = with_overrides(settings, {"train.threads": threads})
        distributed.run_on(nproc, _train_rank, settings, quiet)
    else:
        _train_rank(settings, quiet)


def _train_rank(settings: TrainingSettings, quiet: bool) -> None:
    """One rank's part of `gamerec train` (the only one outside a distributed run)."""
    from training.pipeline import run, summary

    result = run(settings, progress=not quiet)
    if result is not None:  # rank 0
        typer.echo(summary(result))
        typer.secho(f"saved model: {result.tag}", fg=typer.colors.GREEN)


@app.command()
@clear_errors
def index(
    type: Annotated[
        IndexType,
        typer.Option("--type", help="index kind; auto: exact or index.approximate, tuned"),
    ] = IndexType.auto,
    model: Annotated[str | None, typer.Option(help="model tag [default: the newest]")] = None,
) -> None:
    """Rebuild the index of a stored model as a new version, with its measured recall."""
    from index import build_and_measure
    from training.store import load_model, save_model

    artifacts = load_model(_latest(model))
    cfg = IndexConfig.model_validate({**artifacts.settings.index.model_dump(), "type": type.value})
    built, report = build_and_measure(
        artifacts.item_embeddings, cfg, artifacts.recall_queries, artifacts.settings.train.seed
    )
    settings = artifacts.settings.model_copy(update={"index": cfg})
    metrics = {**artifacts.metrics, "index": asdict(report)}
    tag = save_model(replace(artifacts, index=built, settings=settings, metrics=metrics))
    typer.echo(report.summary())
    if report.warning():
        typer.secho(report.warning(), fg=typer.colors.YELLOW, err=True)
    typer.secho(f"saved model: {tag}", fg=typer.colors.GREEN)


@app.command()
@clear_errors
def evaluate(
    model: Annotated[str | None, typer.Option(help="model tag [default: the newest]")] = None,
) -> None:
    """Print the evaluation table of a stored model."""
    from training.report import format_table
    from training.store import load_model

    artifacts = load_model(_latest(model))
    typer.echo(
        format_table(
            artifacts.metrics["evaluation"], f"{artifacts.tag} (data set: {artifacts.dataset})"
        )
    )
    typer.echo(
        f"index: {artifacts.metrics['index']['type']}, "
        f"recall@10 vs exact {artifacts.metrics['index']['recall_at_10']:.4f}"
    )


if __name__ == "__main__":
    app()
