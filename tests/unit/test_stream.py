"""Streamed plays: whole players from row groups, the in-memory split, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import quick_settings
from training.config import with_overrides
from training.data import io as data_io
from training.data.io import open_dataset, write_dataset
from training.data.stream import PlayFile, stream_plays, training_plays
from training.data.synthetic import generate
from training.distributed import Ranks
from training.features import Vocabulary
from training.histories import Histories
from training.schema import DataError

ROWS_PER_GROUP = 50  # a few hundred row groups, many players spanning two


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    return generate(n_users=600, n_games=80, seed=5)


@pytest.fixture(scope="module")
def processed(data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    interactions, games = data
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data_io, "ROW_GROUP_PLAYS", ROWS_PER_GROUP)
        return write_dataset(interactions, games, tmp_path_factory.mktemp("stream"), "small")


def _settings(processed: Path, **data: object):
    overrides = {"data.streaming": "always", "data.stream_buffer_plays": 300}
    return with_overrides(quick_settings(processed), {**overrides, **data})


def test_players_spanning_row_groups_are_read_whole(processed: Path, data) -> None:
    vocab = Vocabulary.from_games_table(data[1])
    whole = Histories.from_interactions(data[0], vocab)
    file = PlayFile(processed / "interactions.parquet")
    assert (file.group_rows == ROWS_PER_GROUP).sum() > 100
    scan = file.scan(data[1], vocab, batch_plays=1000, progress=False)
    # Batches of whole players: each player's count is their whole history's.
    position = {user: i for i, user in enumerate(whole.user_ids)}
    in_file = [position[u] for u in scan.user_ids]
    np.testing.assert_array_equal(scan.lengths, whole.lengths()[in_file])
    # Pieces are cut between players only, and hold every player once.
    firsts = [piece.first_player for piece in scan.pieces]
    assert firsts == list(np.cumsum([0] + [p.n_players for p in scan.pieces])[:-1])
    assert sum(p.n_players for p in scan.pieces) == len(whole)
    assert 1 < len(scan.pieces) < len(file.group_rows)  # some row groups were joined


def test_the_streamed_split_is_the_in_memory_split(processed: Path) -> None:
    stored = open_dataset(processed)
    vocab = Vocabulary.from_games_table(stored.games_table)
    memory = training_plays(stored, vocab, _settings(processed, **{"data.streaming": "never"}))
    streamed = stream_plays(stored, vocab, _settings(processed), progress=False)
    assert memory.stream is None and streamed.stream is not None
    for name in ("validation", "test"):
        expected, got = getattr(memory.split, name), getattr(streamed.split, name)
        ids = memory.histories.user_ids[expected.users]
        np.testing.assert_array_equal(streamed.histories.user_ids[got.users], ids)
        for a, b in zip(expected.inputs + expected.targets, got.inputs + got.targets, strict=True):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(streamed.train_counts, memory.train_counts)
    assert streamed.n_train_players == memory.n_train_players == len(memory.split.train_users)


def test_an_epoch_reads_each_training_player_once_in_full_batches(processed: Path) -> None:
    stored = open_dataset(processed)
    vocab = Vocabulary.from_games_table(stored.games_table)
    plays = stream_plays(stored, vocab, _settings(processed), progress=False)
    whole = Histories.from_interactions(data_io.load_dataset(processed).interactions, vocab)
    rng = np.random.default_rng(0)
    seen: list[str] = []
    shards = []
    for rank in (0, 1):
        ranks = Ranks(rank, 2)
        n = plays.stream.n_players(ranks)
        batches = list(plays.stream.batches(rng, ranks, batch_size=32, n_players=n))
        assert all(len(users) == 32 for _, users in batches[:-1]) and len(batches[-1][1]) <= 32
        ids = [h.user_ids[u] for h, u in batches]
        for h, users in batches:  # every history as it is in the whole table
            for user in users[:3]:
                i = np.searchsorted(whole.user_ids, h.user_ids[user])
                np.testing.assert_array_equal(
                    h.game_positions[h.span(user)], whole.game_positions[whole.span(i)]
                )
        shards.append(set(np.concatenate(ids)))
        seen += list(np.concatenate(ids))
    assert len(seen) == len(set(seen)) == plays.n_train_players  # once, and every one
    assert not shards[0] & shards[1]
    held = set(plays.histories.user_ids)
    assert not held & set(seen)


def _write_plays(directory: Path, plays: pd.DataFrame, schema: pa.Schema | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(plays, schema=schema, preserve_index=False)
    pq.write_table(table, directory / "interactions.parquet", row_group_size=ROWS_PER_GROUP)
    return directory / "interactions.parquet"


def test_bad_files_give_clear_errors(data, tmp_path: Path) -> None:
    interactions, games = data
    vocab = Vocabulary.from_games_table(games)

    def scan(plays: pd.DataFrame, name: str) -> None:
        file = PlayFile(_write_plays(tmp_path / name, plays))
        file.scan(games, vocab, batch_plays=300, progress=False)

    # A player whose rows come in two places.
    moved = pd.concat([interactions.iloc[1:500], interactions.iloc[:1], interactions.iloc[500:]])
    with pytest.raises(DataError, match=r"player 'u_0' has rows in two places") as err:
        scan(moved, "ungrouped")
    assert (err.value.row, err.value.column) == (500, "user_id")
    # A bad value far into the file: the row is the file's, not the batch's.
    negative = interactions.copy()
    negative.loc[700, "minutes_played"] = -3.0
    with pytest.raises(DataError, match="negative") as err:
        scan(negative, "negative")
    assert (err.value.row, err.value.column) == (701, "minutes_played")
    unknown = interactions.copy()
    unknown.loc[900, "game_id"] = "g_nope"
    with pytest.raises(DataError, match="'g_nope' is not in the games catalog") as err:
        scan(unknown, "unknown")
    assert err.value.row == 901
    # Columns of the wrong type, a missing column, a file that is not Parquet.
    numbers = interactions.assign(user_id=interactions["user_id"].str[2:].astype(int))
    with pytest.raises(DataError, match="is int64, streamed training reads string"):
        PlayFile(_write_plays(tmp_path / "ints", numbers))
    with pytest.raises(DataError, match="missing column") as err:
        PlayFile(
            _write_plays(tmp_path / "no-achievements", interactions.drop(columns="achievements"))
        )
    assert err.value.column == "achievements"
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        PlayFile(garbage)
