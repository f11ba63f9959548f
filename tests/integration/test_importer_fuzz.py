"""Fuzzing the importers (Hypothesis): malformed play CSVs and metadata Parquet files.

Each input goes through `gamerec data steam200k` as a user runs it (in process). It either
imports, and the written data set loads back and agrees with the report, or stops with exit code
2 and one line naming the file; either way no temporary file is left, a failure leaves the earlier
data set as it was, and the model store is never touched.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import traceback
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from training.cli import app
from training.data import io as data_io
from training.data.io import load_dataset, write_dataset
from training.data.steam import read_game_metadata, read_plays
from training.data.synthetic import generate
from training.schema import DataError

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
RUNNER = CliRunner()
TITLES = ["Dota 2", "The Elder Scrolls V Skyrim", "Portal, Still Alive", 'Say "Hi"', "Café ☕"]


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def store(trained) -> Path:
    """The model store, with the session's trained model in it."""
    return Path(os.environ["BENTOML_HOME"]) / "models"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with an earlier processed data set in `processed/`."""
    root = tmp_path_factory.mktemp("importer-fuzz")
    interactions, games = generate(n_users=200, n_games=50, seed=5)
    write_dataset(interactions, games, root / "processed", name="earlier")
    return root


def _import(workspace: Path, plays: bytes, games: bytes | None = None) -> None:
    """Run the importer on these bytes and check the outcome (see the module doc)."""
    out = workspace / "processed"
    (workspace / "plays.csv").write_bytes(plays)
    args = ["data", "steam200k", "--plays", str(workspace / "plays.csv"), "--out", str(out)]
    if games is not None:
        (workspace / "games.parquet").write_bytes(games)
        args += ["--games", str(workspace / "games.parquet")]
    before = _digests(out)
    result = RUNNER.invoke(app, args)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["dataset.json", "games.parquet", "interactions.parquet"]  # no temporary file
    if result.exit_code == 0:
        dataset = load_dataset(out)
        report = dataset.info["report"]
        assert report["rows_kept"] == len(dataset.interactions)
        assert (
            report["rows_read"]
            == report["rows_kept"] + report["rows_merged"] + report["rows_dropped"]
        )
        assert dataset.interactions["minutes_played"].between(0, 1e8).all()
    else:
        assert result.exit_code == 2, "".join(traceback.format_exception(result.exception))
        line = result.output.strip()
        assert line.startswith("error: ") and "\n" not in line, result.output
        assert str(workspace) in line, line  # names the file (or the import of it)
        assert _digests(out) == before


# ---------------------------------------------------------------- named cases

HEADER = "user_id,game_title,hours\n"
GOOD = HEADER + "1,Dota 2,1.5\n2,Café,2\n"


@pytest.mark.parametrize(
    ("plays", "row", "column", "message"),
    [
        ((GOOD + "3,Por").encode(), 4, None, "expected 3 columns, found 2"),
        ((HEADER + '1,"Dota 2').encode(), 2, None, "expected 3 columns, found 2"),
        (b"user,title,hours\n1,A,1\n", 1, None, "expected the header"),
        (b"user_id,title,hours\n1,A,1\n", 1, "game_title", "missing column"),
        ((HEADER + "1,A,1.5,extra\n").encode(), 2, None, "expected 3 columns, found 4"),
        ((HEADER + "1,A,one\n").encode(), 2, "hours", "not a number: 'one'"),
        ((HEADER + "1,A,-1\n").encode(), 2, "hours", "negative hours"),
        ((HEADER + "1,A,1e7\n").encode(), 2, "hours", "over the maximum"),
        ((HEADER + "1,A,inf\n").encode(), 2, "hours", "not finite"),
        (GOOD.encode("latin-1"), 3, None, "not valid UTF-8 (byte 0xe9)"),
        ((HEADER + "1,A,1\n").encode("utf-16-le"), 1, None, "UTF-16 without a BOM"),
        (b"\xff\xfe" + "1,A,1\n".encode("utf-16-le")[:-1], 1, None, "not valid UTF-16-LE"),
        ((HEADER + "1," + "x" * 200_000 + ",1\n").encode(), 2, None, "field larger than"),
        (b"\xef\xbb\xbf", None, None, "file is empty"),
    ],
    ids=[
        "truncated-row",
        "truncated-quote",
        "no-header",
        "wrong-column",
        "extra-column",
        "text-hours",
        "negative-hours",
        "huge-hours",
        "infinite-hours",
        "latin-1",
        "utf-16-no-bom",
        "utf-16-odd-bytes",
        "huge-field",
        "only-a-bom",
    ],
)
def test_bad_play_files_name_row_and_column(tmp_path: Path, plays, row, column, message):
    path = tmp_path / "plays.csv"
    path.write_bytes(plays)
    with pytest.raises(DataError) as info:
        read_plays(path)
    assert (info.value.file, info.value.row, info.value.column) == (str(path), row, column)
    assert message in info.value.message


@pytest.mark.parametrize(
    "plays",
    [
        GOOD.encode("utf-8-sig"),
        GOOD.encode("utf-16"),  # with its BOM, as Excel writes "Unicode text"
        GOOD.replace("\n", "\r\n").encode(),
        GOOD.replace("\n", "\r").encode(),
        (GOOD + "\n\n").encode(),
    ],
    ids=["utf-8-bom", "utf-16-bom", "crlf", "cr", "blank-lines"],
)
def test_documented_repairs_read_the_same_plays(tmp_path: Path, plays: bytes):
    path, reference = tmp_path / "plays.csv", tmp_path / "reference.csv"
    path.write_bytes(plays)
    reference.write_bytes(GOOD.encode())
    assert read_plays(path)[0].equals(read_plays(reference)[0])


def test_duplicate_rows_are_summed_and_counted(tmp_path: Path):
    path = tmp_path / "plays.csv"
    path.write_bytes((GOOD + "1,Dota 2,1.5\n1,Dota 2,1\n").encode())
    plays, report = read_plays(path)
    assert plays.set_index(["user_id", "game_title"])["hours"][("1", "Dota 2")] == 4.0
    assert report["duplicate_rows_merged"] == 2 and report["rows_kept"] == 2


def _parquet(path: Path, **columns: pa.Array) -> Path:
    base = {
        "title": pa.array(["Dota 2"]),
        "genres": pa.array([["Action"]]),
        "tags": pa.array([["MOBA"]]),
    }
    pq.write_table(pa.table({**base, **columns}), path)
    return path


@pytest.mark.parametrize(
    ("columns", "row", "column", "message"),
    [
        ({"genres": pa.array(["Action"])}, None, "genres", "expected lists of strings"),
        ({"tags": pa.array([[1.5]])}, None, "tags", "expected lists of strings"),
        ({"title": pa.array([7])}, None, "title", "expected strings, found int64"),
        ({"app_id": pa.array(["570"])}, None, "app_id", "expected numbers, found string"),
        ({"app_id": pa.array([570.5])}, 1, "app_id", "not a Steam app id: 570.5"),
        ({"app_id": pa.array([-570.0])}, 1, "app_id", "not a Steam app id: -570"),
        ({"app_id": pa.array([float("inf")])}, 1, "app_id", "not a Steam app id: inf"),
        ({"price": pa.array(["free"])}, None, "price", "expected numbers, found string"),
        ({"release_date": pa.array([2011])}, None, "release_date", "expected dates"),
    ],
    ids=[
        "genres-str",
        "tags-float",
        "title-int",
        "app-id-str",
        "app-id-fraction",
        "app-id-negative",
        "app-id-inf",
        "price-str",
        "date-int",
    ],
)
def test_bad_metadata_types_are_named(tmp_path: Path, columns, row, column, message):
    path = _parquet(tmp_path / "games.parquet", **columns)
    with pytest.raises(DataError) as info:
        read_game_metadata(path)
    assert (info.value.file, info.value.row, info.value.column) == (str(path), row, column)
    assert message in info.value.message


def test_truncated_metadata_file(tmp_path: Path):
    path = _parquet(tmp_path / "games.parquet", app_id=pa.array([570.0]))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_game_metadata(path)


# ---------------------------------------------------------------- play files


cells = st.one_of(
    st.sampled_from(["", " ", "0", "1.5", "-2", "nan", "inf", "1e300", "2000000", "abc", "1,5"]),
    st.text(max_size=12),
)
hours = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["-0.0", "1e-300", "1666666.67", "1666666.66", " 3 ", "0x10", "1_000"]),
)
users = st.one_of(st.integers(0, 30).map(str), cells)
titles = st.one_of(st.sampled_from(TITLES), cells)


@st.composite
def play_files(draw: st.DrawFn) -> bytes:
    """A play file in one of the two forms, then damaged in some of the ways files get damaged."""
    raw = draw(st.booleans())
    row = (
        st.tuples(users, titles, st.sampled_from(["play", "purchase", "Play", "buy"]), hours).map(
            lambda r: [r[0], r[1], r[2], r[3], "0"]
        )
        if raw
        else st.tuples(users, titles, hours).map(list)
    )
    rows = draw(st.lists(row, min_size=0, max_size=8))
    if rows and draw(st.booleans()):  # duplicate rows (summed, as documented)
        rows += [list(r) for r in draw(st.lists(st.sampled_from(rows), max_size=3))]
    if not raw:
        header = ["user_id", "game_title", "hours"]
        rows.insert(0, draw(st.permutations(header)) if draw(st.booleans()) else header)
        if draw(st.booleans()):  # wrong columns: one renamed, dropped or added
            column = draw(st.integers(0, 2))
            edit = draw(st.sampled_from(["rename", "drop", "add"]))
            for r in rows:
                if edit == "rename" and r is rows[0]:
                    r[column] = r[column] + "_x"
                elif edit == "drop":
                    del r[column]
                elif edit == "add":
                    r.append("extra")
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "latin-1"]))
    data = text.getvalue().encode(encoding, errors="replace")
    if data and draw(st.booleans()):  # truncated, or stray bytes
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.sampled_from([b"", b"\x00", b"\xff", b'"', b"\r", b"\n\n"]))
    return data


@FUZZ
@given(plays=play_files())
def test_fuzzed_play_files(workspace: Path, store: Path, plays: bytes):
    before = _digests(store)
    _import(workspace, plays)
    assert _digests(store) == before


# ---------------------------------------------------------------- metadata files

# Arrow columns of one kind each: the documented type first, then wrong ones.
METADATA_COLUMNS = {
    "title": [pa.string(), pa.int64(), pa.list_(pa.string())],
    "app_name": [pa.string(), pa.float64()],
    "genres": [pa.list_(pa.string()), pa.string(), pa.list_(pa.int64())],
    "tags": [pa.list_(pa.string()), pa.list_(pa.float64())],
    "app_id": [pa.float64(), pa.int64(), pa.string()],
    "price": [pa.float64(), pa.string()],
    "num_reviews": [pa.float64(), pa.list_(pa.string())],
    "release_date": [pa.string(), pa.timestamp("ns"), pa.int64()],
    "developer": [pa.string(), pa.int64()],
}


def _values(kind: pa.DataType) -> st.SearchStrategy:
    if pa.types.is_list(kind):
        return st.none() | st.lists(_values(kind.value_type), max_size=3)
    if pa.types.is_string(kind):
        return (
            st.none()
            | st.sampled_from(TITLES + ["", "2011-11-10", "Jan 2018"])
            | st.text(max_size=10)
        )
    if pa.types.is_int64(kind) or pa.types.is_timestamp(kind):
        return st.none() | st.integers(-(2**40), 2**40)
    return (
        st.none()
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.sampled_from([220.0, 72850.0, -1.0, 1.5, 2.0**33])
    )


def _mostly(right: object, wrong: list) -> st.SearchStrategy:
    """`right` four times in five, else one of `wrong`: most files get past the first check."""
    return st.sampled_from([right] * 4 + wrong) if wrong else st.just(right)


@st.composite
def metadata_files(draw: st.DrawFn) -> bytes:
    """A metadata table with some of its columns, each of the documented type or a wrong one."""
    n = draw(st.integers(1, 5))
    columns = {}
    for name, (kind, *wrong_kinds) in METADATA_COLUMNS.items():
        if draw(_mostly(True, [False])):
            kind = draw(_mostly(kind, wrong_kinds))
            columns[name] = pa.array(draw(st.lists(_values(kind), min_size=n, max_size=n)), kind)
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns or {"x": [1]}), buffer)
    data = buffer.getvalue()
    if draw(_mostly(False, [True])):  # truncated
        data = data[: draw(st.integers(0, len(data) - 1))]
    return data


PLAYS = b'user_id,game_title,hours\n1,Dota 2,2.5\n2,"Portal, Still Alive",1\n3,Solo,4\n'


@settings(FUZZ, max_examples=100)
@given(games=metadata_files())
def test_fuzzed_metadata_files(workspace: Path, store: Path, games: bytes):
    before = _digests(store)
    _import(workspace, PLAYS, games)
    assert _digests(store) == before


def test_an_unwritable_output_gets_one_line_and_exit_2(workspace: Path, tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    (workspace / "plays.csv").write_bytes(PLAYS)
    plays = str(workspace / "plays.csv")
    result = RUNNER.invoke(app, ["data", "steam200k", "--plays", plays, "--out", str(blocker)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and str(blocker) in result.output


# ---------------------------------------------------------------- interrupted writes


def test_an_interrupted_write_is_caught_on_load_and_train_refuses_it(
    workspace: Path, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A crash between replacing interactions.parquet and dataset.json (say, power lost): the
    files disagree with the recorded digests, loading says so, training stops (exit 2) and the
    model store is untouched."""
    out = tmp_path / "processed"
    interactions, games = generate(n_users=100, n_games=30, seed=1)
    write_dataset(interactions, games, out, name="first")
    replaced = []

    def crash_after_first(source: Path, target: Path) -> None:
        if replaced:
            raise OSError("power lost")
        replaced.append(target)
        real_replace(source, target)

    real_replace = os.replace
    monkeypatch.setattr(data_io.os, "replace", crash_after_first)
    other, _ = generate(n_users=120, n_games=30, seed=2)
    with pytest.raises(OSError, match="power lost"):
        write_dataset(other, games, out, name="second")
    monkeypatch.undo()
    assert replaced == [out / "interactions.parquet"]
    with pytest.raises(DataError, match="does not match its digest") as info:
        load_dataset(out)
    assert info.value.file == str(out / "interactions.parquet")

    before = _digests(store)
    result = RUNNER.invoke(app, ["train", "--set", f"data.processed_dir={out}", "--quiet"])
    assert result.exit_code == 2, result.output
    assert "does not match its digest" in result.output
    assert _digests(store) == before
