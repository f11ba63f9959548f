"""The plays a training run reads: whole in memory, or streamed from Parquet in batches.

Streaming (`data.streaming`, above `data.stream_above_plays` plays with `auto`) reads the
interactions file with pyarrow's dataset API in batches of row groups, never whole: memory is
bounded by a batch, the model and a few numbers per player, not by the plays. The rows must come
grouped by player (`gamerec data synth` writes them sorted by player); a player may span row
groups. Before training, two passes over the file:

1. the scan validates every row (as loading in memory does, errors naming the file's rows),
   counts each player's plays and each game's, and cuts the row groups into *pieces*: runs of
   row groups that no player crosses, which an epoch reads in a random order and the ranks of a
   distributed run share out (piece i to rank i mod world);
2. the held-out players' histories (validation and test, at most `split.max_eval_users` each)
   are read into memory; the training players' plays per game are the scan's counts less
   theirs.

The split is `training.evaluate.split_users` itself, run on a skeleton of the players (each
one's play count, no plays): it picks the players and cuts their histories from the counts
alone, so a streamed run holds out the same players, with the same inputs and targets, as an
in-memory run of the same data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from tqdm import tqdm

from training.config import DataConfig, TrainingSettings
from training.data.io import StoredDataset, read_interactions, validate_piece
from training.distributed import Ranks
from training.evaluate import EvalSet, Split, split_users
from training.features import Vocabulary
from training.histories import Histories, by_player_id
from training.schema import INTERACTIONS_SCHEMA, DataError

COLUMNS = INTERACTIONS_SCHEMA.names
# Column types a streamed file may have (read as INTERACTIONS_SCHEMA's).
_KINDS = {
    "user_id": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    "game_id": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    "minutes_played": lambda t: pa.types.is_floating(t) or pa.types.is_integer(t),
    "achievements": pa.types.is_integer,
}


@dataclass(frozen=True)
class TrainingPlays:
    """What training and evaluation read. In memory, `histories` holds every player and
    `split` indexes them; streamed, `histories` holds the held-out players only (which the
    evaluation sets index), `split.train_users` is empty and the training players are read
    from `stream`."""

    histories: Histories
    split: Split
    train_counts: np.ndarray  # int64 per catalog game: how many training players played it
    n_train_players: int
    stream: PlayStream | None


def streams(cfg: DataConfig, n_plays: int) -> bool:
    if cfg.streaming == "auto":
        return n_plays > cfg.stream_above_plays
    return cfg.streaming == "always"


def training_plays(
    stored: StoredDataset, vocab: Vocabulary, settings: TrainingSettings, progress: bool = True
) -> TrainingPlays:
    """The data set's plays, streamed or read whole as `data.streaming` says."""
    if streams(settings.data, stored.n_interactions()):
        return stream_plays(stored, vocab, settings, progress)
    dataset = read_interactions(stored)
    histories = Histories.from_interactions(dataset.interactions, vocab)
    split = split_users(histories, settings.split)
    counts = histories.play_counts(split.train_users, len(vocab.game_ids))
    return TrainingPlays(histories, split, counts, len(split.train_users), stream=None)


def stream_plays(
    stored: StoredDataset, vocab: Vocabulary, settings: TrainingSettings, progress: bool = True
) -> TrainingPlays:
    """Scan the interactions file, split, read the held-out players (see the module doc)."""
    file = PlayFile(stored.interactions_path)
    scan = file.scan(stored.games_table, vocab, settings.data.stream_buffer_plays, progress)
    order = by_player_id(pa.array(scan.user_ids, pa.string()))
    split = split_users(_skeleton(scan.user_ids[order], scan.lengths[order]), settings.split)
    held_sorted = np.sort(np.concatenate([split.validation.users, split.test.users]))
    held_out = np.zeros(len(scan.lengths), dtype=bool)
    held_out[order[held_sorted]] = True  # per player in file order
    stream = PlayStream(file, vocab, scan, held_out, settings.data)
    histories = stream.held_out_histories(progress)
    # Held-out player i (by id) is the i-th held-out player of the skeleton.
    histories = histories.take(by_player_id(pa.array(histories.user_ids, pa.string())))
    local = Split(
        train_users=np.zeros(0, np.int64),
        validation=_with_targets(split.validation, held_sorted, histories),
        test=_with_targets(split.test, held_sorted, histories),
    )
    everyone = np.arange(len(histories))
    stream.train_counts = scan.game_plays - histories.play_counts(everyone, len(vocab.game_ids))
    return TrainingPlays(histories, local, stream.train_counts, int((~held_out).sum()), stream)


def _skeleton(user_ids: np.ndarray, lengths: np.ndarray) -> Histories:
    """Every player with their play count and no plays (zero-stride arrays, no memory):
    `split_users` reads the counts to pick players and cut their histories; the targets it
    reads from these arrays are placeholders, replaced by `_with_targets`."""
    n_plays = int(lengths.sum())
    nothing = np.broadcast_to(np.zeros(1), (n_plays,))
    return Histories(
        user_ids=user_ids,
        indptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        game_positions=np.broadcast_to(np.zeros(1, np.int64), (n_plays,)),
        minutes=nothing,
        achievements=nothing,
    )


def _with_targets(eval_set: EvalSet, held_sorted: np.ndarray, histories: Histories) -> EvalSet:
    """A skeleton's evaluation set on the held-out players' `histories`: the same inputs, and
    as targets the games of the history that are not inputs (how `split_users` cuts)."""
    users = np.searchsorted(held_sorted, eval_set.users)
    targets = []
    for user, inputs in zip(users, eval_set.inputs, strict=True):
        games = histories.game_positions[histories.span(user)]
        targets.append(np.delete(games, inputs))
    return EvalSet(users=users, inputs=eval_set.inputs, targets=targets)


@dataclass(frozen=True)
class Piece:
    """Consecutive row groups that no player crosses, and the players in them."""

    row_groups: list[int]
    first_player: int  # in file order
    n_players: int


@dataclass(frozen=True)
class Scan:
    """What the first pass learns: each player's id and play count in file order, the pieces,
    and how many players played each game."""

    user_ids: np.ndarray
    lengths: np.ndarray
    pieces: list[Piece]
    game_plays: np.ndarray


class PlayFile:
    """An interactions Parquet file, read in row groups with pyarrow's dataset API."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            fragments = list(ds.dataset(self.path, format="parquet").get_fragments())
            self.fragment = fragments[0]
            self.fragment.ensure_complete_metadata()
        except (pa.ArrowException, OSError, IndexError) as e:
            raise DataError(self.path, f"not a readable Parquet file: {e}") from e
        schema = self.fragment.physical_schema
        for field in INTERACTIONS_SCHEMA:
            if field.name not in schema.names:
                raise DataError(
                    self.path, f"missing column (found {schema.names})", column=field.name
                )
            found = schema.field(field.name).type
            if not _KINDS[field.name](found):
                raise DataError(
                    self.path,
                    f"is {found}, streamed training reads {field.type} (as `gamerec data` writes)",
                    column=field.name,
                )
        self.group_rows = np.array([g.num_rows for g in self.fragment.row_groups], np.int64)

    def read(self, row_groups: list[int]) -> pa.Table:
        """The row groups' rows, in the canonical column types."""
        try:
            table = self.fragment.subset(row_group_ids=row_groups).to_table(columns=COLUMNS)
            return table.cast(INTERACTIONS_SCHEMA)
        except (pa.ArrowException, OSError) as e:
            raise DataError(self.path, f"cannot read row groups {row_groups}: {e}") from e

    def scan(
        self, games: pd.DataFrame, vocab: Vocabulary, batch_plays: int, progress: bool
    ) -> Scan:
        """Validate every row and count players and games (see the module doc)."""
        ids, lengths = [], []
        game_plays = np.zeros(len(vocab.game_ids), np.int64)
        bar = tqdm(total=int(self.group_rows.sum()), desc="scan", unit="play", disable=not progress)
        for table, first_row in self._whole_players(batch_plays):
            validate_piece(table.to_pandas(), games, str(self.path), first_row)
            batch = Histories.from_table(table, vocab)
            ids.append(batch.user_ids)
            lengths.append(batch.lengths())
            game_plays += np.bincount(batch.game_positions, minlength=len(game_plays))
            bar.update(len(table))
        bar.close()
        if not ids:
            raise DataError(self.path, "no interactions")
        user_ids, lengths = np.concatenate(ids), np.concatenate(lengths)
        self._check_grouped(user_ids, lengths)
        return Scan(user_ids, lengths, self._pieces(lengths), game_plays)

    def _whole_players(self, batch_plays: int) -> Iterator[tuple[pa.Table, int]]:
        """The file in order, in tables of whole players of at least `batch_plays` rows (but
        the last), each with the number of its first row in the file. The last player of a
        batch may go on in the next row group: its rows wait for the next batch."""
        carried, first_row, groups, rows = None, 1, [], 0
        for group, n in enumerate(self.group_rows):
            groups.append(group)
            rows += n
            last = group == len(self.group_rows) - 1
            if rows < batch_plays and not last:
                continue
            table = self.read(groups)
            groups, rows = [], 0
            if carried is not None:
                table = pa.concat_tables([carried, table])
            cut = len(table) if last else _last_player_start(table["user_id"])
            if cut > 0:
                yield table.slice(0, cut), first_row
                first_row += cut
            carried = table.slice(cut)

    def _check_grouped(self, user_ids: np.ndarray, lengths: np.ndarray) -> None:
        """Each player's rows come together: a player seen twice has rows in two places."""
        order = by_player_id(pa.array(user_ids, pa.string()))
        repeated = np.flatnonzero(user_ids[order][1:] == user_ids[order][:-1])
        if len(repeated):
            first, again = np.sort(order[[repeated[0], repeated[0] + 1]])
            rows = np.cumsum(lengths) - lengths + 1
            raise DataError(
                self.path,
                f"player {str(user_ids[first])!r} has rows in two places (from row "
                f"{rows[first]} and from row {rows[again]}): streamed training reads each "
                "player's rows together, as `gamerec data synth` writes them; sort the rows by "
                "user_id, or set data.streaming: never",
                row=int(rows[again]),
                column="user_id",
            )

    def _pieces(self, lengths: np.ndarray) -> list[Piece]:
        """The row groups cut where no player crosses from one to the next."""
        player_ends = np.cumsum(lengths)
        pieces, groups, first = [], [], 0
        for group, end in enumerate(np.cumsum(self.group_rows)):
            groups.append(group)
            ended = np.searchsorted(player_ends, end, side="right")  # players ending by `end`
            if ended > first and player_ends[ended - 1] == end:  # `end` is a player's end
                pieces.append(Piece(groups, first, int(ended - first)))
                groups, first = [], int(ended)
        return pieces


def _last_player_start(user_ids: pa.ChunkedArray) -> int:
    """Row where the table's last player's rows begin."""
    others = pc.not_equal(user_ids, user_ids[-1]).to_numpy(zero_copy_only=False)
    before = np.flatnonzero(others)
    return int(before[-1]) + 1 if len(before) else 0


class PlayStream:
    """The training players' plays, read piece by piece (the held-out players left out)."""

    def __init__(
        self, file: PlayFile, vocab: Vocabulary, scan: Scan, held_out: np.ndarray, cfg: DataConfig
    ) -> None:
        self.file, self.vocab, self.pieces, self.lengths = file, vocab, scan.pieces, scan.lengths
        self.held_out = held_out  # per player in file order
        self.buffer_plays = cfg.stream_buffer_plays
        # How many training players played each game (set once the held-out ones are read).
        self.train_counts = np.zeros(len(vocab.game_ids), np.int64)

    def shard(self, ranks: Ranks) -> list[Piece]:
        """This rank's pieces: piece i goes to rank i mod world."""
        if len(self.pieces) < ranks.world:
            raise ValueError(
                f"{self.file.path}: {len(self.pieces)} pieces of row groups for {ranks.world} "
                "ranks, which each read pieces of their own: write the data in more row groups "
                "(training/data/io.py, ROW_GROUP_PLAYS), or train on fewer processes"
            )
        return self.pieces[ranks.rank :: ranks.world]

    def n_players(self, ranks: Ranks) -> int:
        """Training players in this rank's pieces."""
        return sum(int((~self._held(piece)).sum()) for piece in self.shard(ranks))

    def batches(
        self, rng: np.random.Generator, ranks: Ranks, batch_size: int, n_players: int
    ) -> Iterator[tuple[Histories, np.ndarray]]:
        """`n_players` of this rank's training players, in batches of `batch_size` (the last
        may be smaller), as (histories, the batch's players in them). The pieces come in a
        random order, `data.stream_buffer_plays` plays at a time whose players are shuffled;
        the players a buffer has left over after its last full batch join the next one."""
        served, left = 0, None
        for buffer in self._buffers(rng, self.shard(ranks)):
            if left is not None:
                buffer = Histories.concat([left, buffer])
            order = rng.permutation(len(buffer))
            full = len(order) - len(order) % batch_size
            for start in range(0, full, batch_size):
                size = min(batch_size, n_players - served)
                if size <= 0:
                    return
                yield buffer, order[start : start + size]
                served += size
            left = buffer.take(order[full:])
        size = min(0 if left is None else len(left), n_players - served)
        if size > 0:
            yield left, np.arange(size)

    def held_out_histories(self, progress: bool) -> Histories:
        """The held-out players' histories, in file order."""
        parts = []
        for piece in tqdm(self.pieces, desc="held-out players", disable=not progress):
            held = self._held(piece)
            if held.any():
                parts.append(self._read(piece, held))
        return Histories.concat(parts)

    def _buffers(self, rng: np.random.Generator, pieces: list[Piece]) -> Iterator[Histories]:
        parts, plays = [], 0
        for i in rng.permutation(len(pieces)):
            piece = pieces[i]
            parts.append(self._read(piece, ~self._held(piece)))
            plays += len(parts[-1].game_positions)
            if plays >= self.buffer_plays:
                yield Histories.concat(parts)
                parts, plays = [], 0
        if parts:
            yield Histories.concat(parts)

    def _held(self, piece: Piece) -> np.ndarray:
        return self.held_out[piece.first_player : piece.first_player + piece.n_players]

    def _read(self, piece: Piece, players: np.ndarray) -> Histories:
        """The histories of the piece's `players` (a mask over its players)."""
        table = self.file.read(piece.row_groups)
        lengths = self.lengths[piece.first_player : piece.first_player + piece.n_players]
        if len(table) != lengths.sum():
            raise DataError(self.file.path, "changed since training started; train again")
        rows = np.repeat(players, lengths)
        return Histories.from_table(table.filter(pa.array(rows)), self.vocab)
