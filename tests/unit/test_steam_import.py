"""Steam importers, and writing/loading processed data sets atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.data import io as data_io
from training.data.io import load_dataset, write_dataset
from training.data.steam import (
    import_steam200k,
    normalize_title,
    read_game_metadata,
    read_plays,
)
from training.schema import DataError

HEADER_PLAYS = """user_id,game_title,hours
10,The Elder Scrolls V Skyrim,10.5
10,Dota 2,1.0
11,"Portal, Still Alive",0.5
10,Dota 2,2.0
11,The Elder Scrolls V: Skyrim\u2122 ,0.1
11,The Elder Scrolls V Skyrim,0.2
"""

RAW_PLAYS = """10,"The Elder Scrolls V Skyrim",purchase,1.0,0
10,"The Elder Scrolls V Skyrim",play,10.5,0
10,"Dota 2",purchase,1.0,0
10,"Dota 2",play,1.0,0
11,"Portal, Still Alive",play,0.5,0
10,"Dota 2",play,2.0,0
11,"The Elder Scrolls V: Skyrim\u2122 ",play,0.1,0
11,"The Elder Scrolls V Skyrim",play,0.2,0
"""


def write(tmp_path: Path, text: str | bytes, name: str = "plays.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


@pytest.fixture
def metadata(tmp_path: Path) -> Path:
    """A tiny UCSD-like metadata file with duplicate titles, a missing app id and HTML entities."""
    meta = pd.DataFrame(
        {
            "app_id": [72850.0, 400.0, np.nan, 999.0, np.nan],
            "app_name": ["Skyrim", "Portal Still Alive", "Portal, Still Alive", "Solo", "Cave"],
            "title": ["The Elder Scrolls V: Skyrim", "Portal: Still Alive", None, "", "Cave!"],
            "genres": [["RPG"], ["Puzzle", "Design &amp; Illustration"], ["Other"], [], None],
            "tags": [["Open World", "RPG"], ["Puzzle"], [], [], ["Dark"]],
            "price": [19.99, 9.99, 1.0, 0.0, 5.0],
            "developer": ["Bethesda", "Valve", "Nobody", "Me", "Deep"],
            "release_date": pd.to_datetime(["2011-11-10", "2008-10-22", None, None, None]),
            "num_reviews": [500.0, 100.0, 900.0, 1.0, 1.0],
        }
    )
    path = tmp_path / "games.parquet"
    meta.to_parquet(path)
    return path


def test_normalize_title() -> None:
    assert normalize_title("The Elder Scrolls V: Skyrim\u2122 ") == "the elder scrolls v skyrim"
    assert normalize_title("The Elder Scrolls V Skyrim") == "the elder scrolls v skyrim"
    assert normalize_title("Pok\u00e9mon\u00ae  Rumble") == "pokemon rumble"
    assert normalize_title("Clancy's Rainbow Six\u00a9 Siege") == "clancys rainbow six siege"
    assert normalize_title("Half-Life 2") == "halflife 2"
    assert normalize_title("ＦＵＬＬ　ＷＩＤＴＨ") == "full width"


def test_header_form(tmp_path: Path) -> None:
    plays, report = read_plays(write(tmp_path, HEADER_PLAYS))
    assert list(plays.columns) == ["user_id", "game_title", "hours"]
    assert plays["user_id"].dtype == "str" and plays["hours"].dtype == np.float64
    dota = plays[(plays["user_id"] == "10") & (plays["game_title"] == "Dota 2")]
    assert dota["hours"].tolist() == [3.0]
    assert "The Elder Scrolls V: Skyrim\u2122 " in set(plays["game_title"])  # kept raw
    assert report == {
        "plays_form": "header",
        "rows_read": 6,
        "purchase_rows_skipped": 0,
        "duplicate_rows_merged": 1,
        "rows_kept": 5,
    }


def test_raw_kaggle_form_keeps_play_rows(tmp_path: Path) -> None:
    raw, report = read_plays(write(tmp_path, RAW_PLAYS))
    header, _ = read_plays(write(tmp_path, HEADER_PLAYS, "header.csv"))
    pd.testing.assert_frame_equal(raw, header)
    assert report["plays_form"] == "raw"
    assert report["rows_read"] == 8 and report["purchase_rows_skipped"] == 2
    assert report["duplicate_rows_merged"] == 1 and report["rows_kept"] == 5


def test_bom_and_blank_lines_are_accepted(tmp_path: Path) -> None:
    text = b"\xef\xbb\xbf" + b"user_id,game_title,hours\n1,A,1\n\n2,B,2\n"
    plays, _ = read_plays(write(tmp_path, text))
    assert plays["game_title"].tolist() == ["A", "B"]


def test_import_joins_metadata_and_merges_titles(tmp_path: Path, metadata: Path) -> None:
    interactions, games, report = import_steam200k(write(tmp_path, RAW_PLAYS), metadata)
    by_id = games.set_index("game_id")
    # Both Skyrim spellings become app 72850; user 11's two rows are merged (0.1 h + 0.2 h).
    assert sorted(by_id.index) == ["400", "72850", "slug-dota-2"]
    minutes = interactions.set_index(["user_id", "game_id"])["minutes_played"]
    assert minutes[("11", "72850")] == pytest.approx(18.0)
    assert minutes[("10", "72850")] == 630.0
    assert minutes[("10", "slug-dota-2")] == 180.0
    assert interactions["achievements"].eq(0).all()

    skyrim = by_id.loc["72850"]
    assert skyrim["title"] == "The Elder Scrolls V: Skyrim"
    assert (skyrim["genres"], skyrim["tags"]) == (["rpg"], ["open world", "rpg"])
    assert (skyrim["app_id"], skyrim["release_year"], skyrim["has_metadata"]) == (72850, 2011, True)
    # Two metadata rows normalize to "portal still alive": the one with an app id wins.
    assert by_id.loc["400", "genres"] == ["puzzle", "design & illustration"]
    dota = by_id.loc["slug-dota-2"]
    assert (dota["title"], dota["genres"], dota["tags"]) == ("Dota 2", [], [])
    assert not dota["has_metadata"] and pd.isna(dota["app_id"])

    assert report["rows_read"] == 8
    assert report["rows_dropped"] == 2 and report["rows_merged"] == 2
    assert report["rows_kept"] == len(interactions) == 4
    accounted = report["rows_kept"] + report["rows_merged"] + report["rows_dropped"]
    assert report["rows_read"] == accounted
    assert (report["games"], report["games_matched"], report["users"]) == (3, 2, 2)


def test_match_without_app_id_gets_slug_and_metadata(tmp_path: Path, metadata: Path) -> None:
    plays = write(tmp_path, "user_id,game_title,hours\n1,Cave!,1\n2,Solo,2\n")
    _, games, _ = import_steam200k(plays, metadata)
    by_id = games.set_index("game_id")
    assert by_id.loc["slug-cave", "has_metadata"] and by_id.loc["slug-cave", "tags"] == ["dark"]
    assert by_id.loc["slug-cave", "genres"] == []
    # An empty `title` falls back to `app_name`.
    assert by_id.loc["999", "title"] == "Solo"


def test_import_without_metadata_uses_slugs(tmp_path: Path) -> None:
    interactions, games, report = import_steam200k(write(tmp_path, HEADER_PLAYS))
    assert set(games["game_id"]) == {
        "slug-the-elder-scrolls-v-skyrim",
        "slug-dota-2",
        "slug-portal-still-alive",
    }
    assert games["title"].tolist()[0] == "The Elder Scrolls V Skyrim"
    assert report["games_matched"] == 0 and len(interactions) == 4


@pytest.mark.parametrize(
    ("content", "row", "column", "message"),
    [
        ("", None, None, "empty"),
        ("  \n\n", None, None, "empty"),
        (b"user_id,game_title,hours\n1,A,1\n2,Caf\xe9,1\n", 3, None, "UTF-8"),
        ("user_id,game_title\n1,A\n", 1, "hours", "missing column"),
        ("user,title,hours\n1,A,1\n", 1, None, "header"),
        ("user_id,game_title,hours\n1,A,1\n2,B\n", 3, None, "expected 3 columns, found 2"),
        ("user_id,game_title,hours\n1,A,abc\n", 2, "hours", "not a number: 'abc'"),
        ("user_id,game_title,hours\n1,A,1\n1,B,-2\n", 3, "hours", "negative"),
        ("user_id,game_title,hours\n1,A,nan\n", 2, "hours", "not finite"),
        ("user_id,game_title,hours\n1,A,inf\n", 2, "hours", "not finite"),
        ("user_id,game_title,hours\n ,A,1\n", 2, "user_id", "empty"),
        ("user_id,game_title,hours\n1,  ,1\n", 2, "game_title", "empty"),
        ("1,A,play,1.0,0\n1,A,buy,1.0,0\n", 2, "behaviour", "'play' or 'purchase'"),
        ("1,A,purchase,1.0,0\n1,A,play,x,0\n", 2, "value", "not a number"),
        ("1,A,play,1.0,0\n1,A,play,1.0\n", 2, None, "expected 5 columns, found 4"),
    ],
)
def test_bad_play_files(
    tmp_path: Path, content: str | bytes, row: int | None, column: str | None, message: str
) -> None:
    path = write(tmp_path, content)
    with pytest.raises(DataError) as info:
        read_plays(path)
    assert (info.value.file, info.value.row, info.value.column) == (str(path), row, column)
    assert message in info.value.message


def test_missing_play_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as info:
        read_plays(tmp_path / "nope.csv")
    assert info.value.file == str(tmp_path / "nope.csv")


def test_bad_metadata_files(tmp_path: Path) -> None:
    not_parquet = write(tmp_path, "app_id,title\n1,A\n", "games.parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_game_metadata(not_parquet)
    no_tags = tmp_path / "no_tags.parquet"
    pd.DataFrame({"title": ["A"], "genres": [["x"]]}).to_parquet(no_tags)
    with pytest.raises(DataError) as info:
        read_game_metadata(no_tags)
    assert (info.value.file, info.value.column) == (str(no_tags), "tags")
    with pytest.raises(DataError, match="not found"):
        read_game_metadata(tmp_path / "missing.parquet")


def test_write_and_load_round_trip(tmp_path: Path, metadata: Path) -> None:
    interactions, games, report = import_steam200k(write(tmp_path, RAW_PLAYS), metadata)
    out = write_dataset(interactions, games, tmp_path / "processed", "steam200k", report)
    dataset = load_dataset(out)
    pd.testing.assert_frame_equal(dataset.interactions, interactions)
    pd.testing.assert_frame_equal(dataset.games_table, games)
    assert dataset.name == "steam200k"
    assert dataset.info["n_users"] == 2 and dataset.info["n_interactions"] == 4
    assert dataset.info["report"]["games_matched"] == 2


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_failed_write_keeps_previous_dataset(
    tmp_path: Path, metadata: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    interactions, games, _ = import_steam200k(write(tmp_path, RAW_PLAYS), metadata)
    out = tmp_path / "processed"
    write_dataset(interactions, games, out, "first")
    before = _snapshot(out)
    assert set(before) == {"interactions.parquet", "games.parquet", "dataset.json"}

    negative = interactions.assign(minutes_played=-interactions["minutes_played"])
    with pytest.raises(DataError, match="negative"):
        write_dataset(negative, games, out, "second")
    with pytest.raises(DataError, match="not in the games catalog"):
        write_dataset(interactions, games.iloc[:1], out, "second")

    calls = []

    def failing_write_temp(path: Path, data: bytes) -> Path:
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write_temp(path, data)

    real_write_temp = data_io._write_temp
    monkeypatch.setattr(data_io, "_write_temp", failing_write_temp)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(interactions.iloc[:2], games, out, "second")
    assert _snapshot(out) == before  # no change, no temporary files left behind


def test_load_dataset_errors_say_how_to_create_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="gamerec data synth"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="gamerec data steam200k") as info:
        load_dataset(tmp_path / "empty")
    assert info.value.file.endswith("interactions.parquet")
