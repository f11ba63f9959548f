"""GameRec dashboard: what the recommender does, for data scientists and product managers.

    streamlit run dashboard/app.py      # the service at $GAMEREC_API_URL (http://localhost:3000)

A client of the HTTP service only (`dashboard/client.py`): it never loads the model itself.
The Players page reads the processed data set ($GAMEREC_DATA_DIR, default data/processed).
Visitors cannot change the service's address; GAMEREC_DASHBOARD_ALLOW_URL_OVERRIDE=true (local
development only) adds an editable Service URL field to the sidebar.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st
from pandas.io.formats.style import Styler

from dashboard import players
from dashboard.client import JSON, GameRecClient, ServiceError
from dashboard.settings import dashboard_settings

SCORE = st.column_config.NumberColumn("score", format="%.3f")
MINUTES = st.column_config.NumberColumn("minutes", format="%.0f")
HISTORY_COLUMNS = ["title", "recommended at", "held out", "minutes", "achievements", "genres"]


# ------------------------------------------------------------ cached lookups (errors never are)


@st.cache_data(ttl=60, show_spinner=False)
def service_info(url: str) -> JSON:
    return GameRecClient(url).info()


@st.cache_data(ttl=60, show_spinner=False)
def search_games(url: str, query: str, limit: int = 20) -> list[JSON]:
    return GameRecClient(url).games(query, limit)["games"]


@st.cache_data(ttl=600, show_spinner=False)
def known_genres(url: str) -> list[str]:
    """The genres of the 500 most played games: the choices offered as preferences."""
    return sorted({genre for game in search_games(url, "", 500) for genre in game["genres"]})


@st.cache_data(show_spinner="Reading the data set…")
def player_data(folder: str, version: float) -> players.PlayerData:
    """The processed data set; `version` (the file's mtime) reloads it when it changes."""
    return players.load(Path(folder))


# ------------------------------------------------------------ shared pieces


def game_label(game: JSON) -> str:
    return f"{game['title']}  ·  {', '.join(game['genres'])}"


def pick_game(url: str, key: str) -> JSON | None:
    """Search the catalog by title and pick one game (the most played first)."""
    query = st.text_input(
        "Search games by title", key=f"{key}_query", placeholder="empty: the most played games"
    )
    found = {game["game_id"]: game for game in search_games(url, query.strip())}
    if not found:
        st.info(f"No game title contains {query.strip()!r}.")
        return None
    game_id = st.selectbox(
        "Game", list(found), format_func=lambda g: game_label(found[g]), key=f"{key}_game"
    )
    return found[game_id]


def recommendations_frame(answer: JSON, titles: Mapping[str, str]) -> pd.DataFrame:
    """The answer of POST /recommend as a table, "because you played" as a title."""
    rows = [
        {
            "rank": rank,
            "title": item["title"],
            "genres": ", ".join(item["genres"]),
            "score": item["score"],
            "because you played": titles.get(item["because_you_played"] or "", ""),
            "game_id": item["game_id"],
        }
        for rank, item in enumerate(answer["recommendations"], start=1)
    ]
    columns = ["rank", "title", "genres", "score", "because you played", "game_id"]
    return pd.DataFrame(rows, columns=columns)


def answer_notes(answer: JSON, titles: Mapping[str, str]) -> None:
    """Say when the answer is a cold start and what the model ignored."""
    if answer["cold_start"]:
        st.info(
            "**Cold start**: the model knows none of these games, so it answers with the most "
            "played games, those of the preferred genres first."
        )
    if answer["unknown_games"]:
        unknown = ", ".join(titles.get(g, g) for g in answer["unknown_games"])
        st.warning(f"Games the model does not know (ignored): {unknown}")
    if answer["unknown_genres"]:
        st.warning(
            f"Genres the model does not know (ignored): {', '.join(answer['unknown_genres'])}"
        )


# ------------------------------------------------------------ Recommend


def recommend_page(client: GameRecClient) -> None:
    st.header("Recommend")
    st.caption("Describe a player: games played and preferred genres. See what the model suggests.")
    profile: dict[str, JSON] = st.session_state.setdefault("profile", {})
    games_column, preferences_column = st.columns(2, gap="large")
    with games_column:
        st.subheader("Games played")
        add_game(client.base_url, profile)
        show_profile(profile)
    with preferences_column:
        st.subheader("Preferences")
        genres = st.multiselect(
            "Preferred genres",
            known_genres(client.base_url),
            key="genres",
            accept_new_options=True,
        )
        top_k = st.slider("Number of recommendations", 1, 50, 10, key="top_k")
        if st.button("Recommend", type="primary", key="recommend"):
            st.session_state["answer"] = client.recommend(profile_body(profile, genres, top_k))
    if answer := st.session_state.get("answer"):
        show_answer(answer, {game_id: game["title"] for game_id, game in profile.items()})


def add_game(url: str, profile: dict[str, JSON]) -> None:
    game = pick_game(url, key="profile")
    if game is None:
        return
    minutes_column, achievements_column = st.columns(2)
    minutes = minutes_column.number_input(
        "Minutes played", min_value=0.0, value=60.0, step=30.0, key="minutes"
    )
    achievements = achievements_column.number_input(
        "Achievements", min_value=0, value=0, step=1, key="achievements"
    )
    if st.button("Add to profile", key="add_game"):
        profile[game["game_id"]] = {**game, "minutes": minutes, "achievements": achievements}
        st.session_state.pop("answer", None)  # it answered another profile


def show_profile(profile: dict[str, JSON]) -> None:
    if not profile:
        st.info("No games yet: a new player gets the most played games (cold start).")
        return
    table = pd.DataFrame(
        [
            {
                "title": game["title"],
                "minutes": game["minutes"],
                "achievements": game["achievements"],
            }
            for game in profile.values()
        ]
    )
    st.dataframe(table, hide_index=True, width="stretch")
    if st.button("Clear profile", key="clear_profile"):
        profile.clear()
        st.session_state.pop("answer", None)
        st.rerun()


def profile_body(profile: dict[str, JSON], genres: list[str], top_k: int) -> JSON:
    return {
        "user_id": "dashboard",
        "time_played": {game_id: float(game["minutes"]) for game_id, game in profile.items()},
        "achievements": {game_id: int(game["achievements"]) for game_id, game in profile.items()},
        "genres": genres,
        "top_k": top_k,
    }


def show_answer(answer: JSON, titles: Mapping[str, str]) -> None:
    st.subheader("Recommendations")
    st.caption(f"model `{answer['model']}`")
    answer_notes(answer, titles)
    table = recommendations_frame(answer, titles).drop(columns="game_id")
    st.dataframe(table, hide_index=True, width="stretch", column_config={"score": SCORE})


# ------------------------------------------------------------ Similar games


def similar_page(client: GameRecClient) -> None:
    st.header("Similar games")
    st.caption("The games whose learned embeddings are nearest to the one picked.")
    game = pick_game(client.base_url, key="similar")
    if game is None:
        return
    top_k = st.slider("Number of similar games", 1, 50, 10, key="similar_k")
    answer = client.similar(game["game_id"], top_k)
    st.subheader(f"Nearest to {answer['game']['title']}")
    table = pd.DataFrame(
        [
            {"title": g["title"], "genres": ", ".join(g["genres"]), "score": g["score"]}
            for g in answer["similar"]
        ],
        columns=["title", "genres", "score"],
    )
    st.dataframe(table, hide_index=True, width="stretch", column_config={"score": SCORE})


# ------------------------------------------------------------ Players


def players_page(client: GameRecClient) -> None:
    st.header("Players")
    st.caption(
        "A real player of the data set: hold out some of their games, send the rest, and see "
        "whether the model finds the held-out ones."
    )
    folder = dashboard_settings().data_dir
    if missing := players.missing_files(folder):
        st.warning(
            f"No processed data set in `{folder}` (missing {', '.join(missing)}). Create one with "
            f"`make synth` or `make steam`, or set GAMEREC_DATA_DIR to its folder."
        )
        return
    data = player_data(str(folder), (folder / players.INTERACTIONS_FILE).stat().st_mtime)
    served = service_info(client.base_url)["dataset"]
    if served != data.name:
        st.warning(f"The model was trained on `{served}`; this data set is `{data.name}`.")
    active = players.active_players(data.interactions)
    user = st.selectbox(
        "Player (most active first)",
        list(active.index),
        key="player",
        format_func=lambda u: f"{u}  ·  {active[u]} games",
    )
    held_column, k_column = st.columns(2)
    held_percent = held_column.slider("Hold out (% of their games)", 0, 50, 20, 10, key="held")
    top_k = k_column.slider("Number of recommendations", 5, 100, 20, 5, key="player_k")
    show_player(client, data, user, held_percent / 100, top_k)


def show_player(
    client: GameRecClient, data: players.PlayerData, user: str, fraction: float, top_k: int
) -> None:
    played = players.history(data, user)
    played["held out"] = players.hold_out(played, fraction)
    answer = client.recommend(players.recommend_body(user, played[~played["held out"]], top_k))
    titles = dict(zip(played["game_id"], played["title"], strict=True))
    ranked = recommendations_frame(answer, titles)
    held_ids = set(played.loc[played["held out"], "game_id"])
    ranked.insert(2, "played it", ranked["game_id"].isin(held_ids))
    rank_of = dict(zip(ranked["game_id"], ranked["rank"], strict=True))
    played["recommended at"] = [f"#{rank_of[g]}" if g in rank_of else "" for g in played["game_id"]]

    found = int(ranked["played it"].sum())
    columns = st.columns(4)
    columns[0].metric("Games played", len(played))
    columns[1].metric("Sent to the model", len(played) - len(held_ids))
    columns[2].metric("Held out", len(held_ids))
    columns[3].metric(f"Held out found in top {top_k}", f"{found} / {len(held_ids)}")
    answer_notes(answer, titles)
    st.caption("Highlighted: held-out games the player played that the model recommends.")

    left, right = st.columns(2, gap="large")
    with left:
        st.subheader("Recommended")
        table = highlight(ranked.drop(columns="game_id"), ranked["played it"])
        st.dataframe(table, hide_index=True, width="stretch", column_config={"score": SCORE})
    with right:
        st.subheader("Their history")
        history = played.rename(columns={"minutes_played": "minutes"})[HISTORY_COLUMNS]
        table = highlight(history, played["game_id"].isin(rank_of))
        st.dataframe(table, hide_index=True, width="stretch", column_config={"minutes": MINUTES})


def highlight(table: pd.DataFrame, rows: pd.Series) -> Styler:
    """The table with the `rows` (a boolean mask) in green."""
    marked = rows.to_numpy(dtype=bool)
    colors = ["background-color: rgba(33, 195, 84, 0.25)" if m else "" for m in marked]
    return table.style.apply(lambda column: colors, axis=0)


# ------------------------------------------------------------ Model


def model_page(client: GameRecClient) -> None:
    st.header("Model")
    info = service_info(client.base_url)
    index = info["index"]
    st.markdown(
        f"Serving **`{info['model']}`**, trained on the data set **{info['dataset']}** "
        f"({info['created'][:19].replace('T', ' ')} UTC)."
    )
    columns = st.columns(4)
    columns[0].metric("Catalog size", f"{info['catalog_size']:,}")
    columns[1].metric("Embedding dimension", info["embedding_dim"])
    columns[2].metric("Index type", index["type"])
    columns[3].metric("Index recall@10", f"{index['recall_at_10']:.3f}", help="vs exact search")
    if index.get("params"):
        st.caption(f"Index parameters: {index['params']}")
    show_evaluation(info["evaluation"])
    with st.expander("Training"):
        st.json(info["training"])


def show_evaluation(evaluation: dict[str, JSON]) -> None:
    st.subheader("Evaluation on held-out players")
    table = pd.DataFrame(evaluation).T
    metrics = [column for column in table.columns if "@" in column]
    st.dataframe(table[metrics].astype(float).style.format("{:.3f}"), width="stretch")
    tuned = [
        f"{name}: λ = {scores['lambda']:g}"
        for name, scores in evaluation.items()
        if "lambda" in scores
    ]
    if tuned:
        st.caption("Regularization chosen on validation: " + ", ".join(tuned))
    st.altair_chart(evaluation_chart(table[metrics].astype(float)), width="stretch")


def evaluation_chart(table: pd.DataFrame) -> alt.Chart:
    """Grouped bars: one group per metric, one bar per model, in the table's order."""
    models, metrics = list(table.index), list(table.columns)
    scores = table.rename_axis("model").reset_index().melt("model", var_name="metric")
    return (
        alt.Chart(scores)
        .mark_bar()
        .encode(
            x=alt.X("metric:N", sort=metrics, title=None, axis=alt.Axis(labelAngle=0)),
            xOffset=alt.XOffset("model:N", sort=models),
            y=alt.Y("value:Q", title="score"),
            color=alt.Color("model:N", sort=models),
            tooltip=["model", "metric", alt.Tooltip("value:Q", format=".3f")],
        )
    )


# ------------------------------------------------------------ the app

PAGES: dict[str, Callable[[GameRecClient], None]] = {
    "Recommend": recommend_page,
    "Similar games": similar_page,
    "Players": players_page,
    "Model": model_page,
}


def service_url() -> str:
    """The deployment's GAMEREC_API_URL. Only the local-development switch lets a visitor type
    another: no query parameter, widget or session state changes it otherwise."""
    settings = dashboard_settings()
    if not settings.dashboard_allow_url_override:
        st.sidebar.caption(
            f"Every answer comes from the GameRec HTTP service at `{settings.api_url}`."
        )
        return settings.api_url
    st.sidebar.warning(
        "Local development: GAMEREC_DASHBOARD_ALLOW_URL_OVERRIDE is on, so the dashboard's "
        "server calls whatever address is typed here."
    )
    return st.sidebar.text_input("Service URL", value=settings.api_url, key="api_url")


def plain_markdown(text: str) -> str:
    """`text` shown as it is: Streamlit renders messages as Markdown (links, images, LaTeX)."""
    return re.sub(r"([\\`*_\[\]<>$~|#])", r"\\\1", text)


def main() -> None:
    st.set_page_config(page_title="GameRec", page_icon="🎮", layout="wide")
    st.sidebar.title("GameRec")
    page = st.sidebar.radio("Page", list(PAGES), key="page")
    url = service_url()
    try:
        PAGES[page](GameRecClient(url))
    except ServiceError as error:
        st.error(plain_markdown(str(error)))


main()
