"""The Streamlit dashboard's pages (AppTest) against a real `bentoml serve`, and its client."""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import players
from dashboard.client import GameRecClient, ServiceError
from tests.servers import PROJECT_ROOT, free_port

APP = str(PROJECT_ROOT / "dashboard" / "app.py")
PAGES = ["Recommend", "Similar games", "Players", "Model"]
SWITCH = "GAMEREC_DASHBOARD_ALLOW_URL_OVERRIDE"
SECRET = "AKIA-SECRET-1234"
HOSTILE_PAGE = f"<html><body><h1>Internal admin</h1><p>{SECRET}</p></body></html>".encode()


@pytest.fixture(scope="module")
def service_url(served: str) -> str:
    return served


@pytest.fixture
def app(service_url: str, small_data: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The dashboard, pointed at the real service and the data set the model was trained on."""
    monkeypatch.setenv("GAMEREC_API_URL", service_url)
    monkeypatch.setenv("GAMEREC_DATA_DIR", str(small_data))
    return AppTest.from_file(APP, default_timeout=60)


def open_page(at: AppTest, page: str) -> AppTest:
    at.run()
    at.radio(key="page").set_value(page).run()
    assert not at.exception, at.exception
    return at


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def most_played(url: str) -> dict:
    return GameRecClient(url).games("", limit=1)["games"][0]


# ------------------------------------------------------------ pages against the real service


@pytest.mark.slow
def test_model_page_shows_the_served_model(app: AppTest, trained) -> None:
    at = open_page(app, "Model")
    assert not at.error
    assert any(trained.tag in markdown.value for markdown in at.markdown)
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics["Catalog size"] == f"{len(trained.artifacts.games_table):,}"
    evaluation = at.dataframe[0].value
    assert {"popularity", "ease", "two-tower"} <= set(evaluation.index)
    assert {"recall@10", "ndcg@10"} <= set(evaluation.columns)


@pytest.mark.slow
def test_recommend_page_add_a_game_and_ask(app: AppTest, service_url: str) -> None:
    game = most_played(service_url)
    at = open_page(app, "Recommend")
    at.text_input(key="profile_query").input(game["title"]).run()
    assert at.selectbox(key="profile_game").value == game["game_id"]
    at.number_input(key="minutes").set_value(240.0)
    at.button(key="add_game").click().run()
    profile = at.dataframe[0].value
    assert profile["title"].tolist() == [game["title"]]
    assert profile["minutes"].tolist() == [240.0]

    at.slider(key="top_k").set_value(7)
    at.button(key="recommend").click().run()
    assert not at.exception and not at.error
    results = at.dataframe[1].value
    assert len(results) == 7
    assert game["title"] not in results["title"].tolist()  # played games are not recommended
    assert set(results["because you played"]) == {game["title"]}
    assert not [info for info in at.info if "Cold start" in info.value]


@pytest.mark.slow
def test_recommend_page_cold_start_is_marked(app: AppTest) -> None:
    at = open_page(app, "Recommend")
    at.multiselect(key="genres").set_value(["rpg"])
    at.button(key="recommend").click().run()
    assert any("Cold start" in info.value for info in at.info)
    assert len(at.dataframe[0].value) == 10


@pytest.mark.slow
def test_recommend_page_lists_unknown_genres(app: AppTest) -> None:
    at = open_page(app, "Recommend")
    at.multiselect(key="genres").set_value(["no such genre"])
    at.button(key="recommend").click().run()
    assert any("no such genre" in warning.value for warning in at.warning)


@pytest.mark.slow
def test_similar_page(app: AppTest, service_url: str) -> None:
    game = most_played(service_url)
    at = open_page(app, "Similar games")
    assert at.selectbox(key="similar_game").value == game["game_id"]  # empty search: most played
    at.slider(key="similar_k").set_value(5).run()
    assert [s.value for s in at.subheader] == [f"Nearest to {game['title']}"]
    similar = at.dataframe[0].value
    assert len(similar) == 5
    assert similar["score"].is_monotonic_decreasing


@pytest.mark.slow
def test_players_page_marks_held_out_games_found(app: AppTest, small_data: Path) -> None:
    at = open_page(app, "Players")
    assert not at.error and not at.warning
    user = at.selectbox(key="player").value
    history = players.history(players.load(small_data), user)
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics["Games played"] == str(len(history))
    held = round(len(history) * 0.2)
    assert metrics["Held out"] == str(held)

    recommended, played = at.dataframe[0].value, at.dataframe[1].value
    assert len(recommended) == 20
    hits = recommended[recommended["played it"]]
    assert metrics["Held out found in top 20"] == f"{len(hits)} / {held}"
    held_titles = set(played.loc[played["held out"], "title"])
    assert set(hits["title"]) <= held_titles
    marked = played[played["recommended at"] != ""]
    assert set(marked["title"]) == set(hits["title"])


@pytest.mark.slow
def test_players_page_without_hold_out_sends_everything(app: AppTest) -> None:
    at = open_page(app, "Players")
    at.slider(key="held").set_value(0).run()
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics["Held out"] == "0"
    assert metrics["Sent to the model"] == metrics["Games played"]
    assert not at.dataframe[0].value["played it"].any()


# ------------------------------------------------------------ the service down, slow, back


def test_every_page_says_plainly_when_the_service_is_down(
    monkeypatch: pytest.MonkeyPatch, small_data: Path
) -> None:
    url = closed_url()
    monkeypatch.setenv("GAMEREC_API_URL", url)
    monkeypatch.setenv("GAMEREC_DATA_DIR", str(small_data))
    at = AppTest.from_file(APP, default_timeout=60)
    for page in PAGES:
        open_page(at, page)
        assert len(at.error) == 1, page
        message = at.error[0].value
        assert url in message and "not reachable" in message, message
        assert "Traceback" not in message


@pytest.mark.slow
def test_the_page_recovers_when_the_service_is_back(
    service_url: str, trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("GAMEREC_API_URL", f"http://127.0.0.1:{port}")
    at = open_page(AppTest.from_file(APP, default_timeout=60), "Model")
    assert "not reachable" in at.error[0].value
    with tcp_relay(port, service_url):  # the service is back at the same address
        at.run()
        assert not at.error
        assert any(trained.tag in markdown.value for markdown in at.markdown)


def test_a_slow_service_is_reported_as_slow() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(ServiceError, match="did not answer within 0.5 s"):
            GameRecClient(url, timeout=0.5).info()


def test_players_page_says_plainly_when_there_is_no_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GAMEREC_API_URL", closed_url())
    monkeypatch.setenv("GAMEREC_DATA_DIR", str(tmp_path))
    at = open_page(AppTest.from_file(APP, default_timeout=60), "Players")
    assert not at.error
    assert str(tmp_path) in at.warning[0].value
    assert "interactions.parquet" in at.warning[0].value


# ------------------------------------------------------------ the client's error messages


@pytest.mark.slow
def test_client_reports_the_service_errors(service_url: str) -> None:
    client = GameRecClient(service_url)
    with pytest.raises(ServiceError, match="404: game_id 'nope' is not in the catalog") as e:
        client.similar("nope")
    assert e.value.status == 404
    with pytest.raises(ServiceError, match=r"400.*top_k: Input should be less than or equal"):
        client.recommend({"user_id": "u", "top_k": 1000})


# ------------------------------------------------------------ no requests on a visitor's say-so


def test_a_visitor_cannot_point_the_dashboard_elsewhere(
    monkeypatch: pytest.MonkeyPatch, small_data: Path
) -> None:
    with trap(503, b"") as configured, trap() as elsewhere:
        monkeypatch.setenv("GAMEREC_API_URL", configured.url)
        monkeypatch.setenv("GAMEREC_DATA_DIR", str(small_data))
        monkeypatch.delenv(SWITCH, raising=False)
        at = AppTest.from_file(APP, default_timeout=60)
        for name in ("api_url", "service_url", "url", "GAMEREC_API_URL"):
            at.query_params[name] = elsewhere.url
            at.session_state[name] = elsewhere.url
        for page in PAGES:
            open_page(at, page)
        assert not at.text_input  # no Service URL field
        assert any(configured.url in caption.value for caption in at.sidebar.caption)
        assert elsewhere.requests == []
        assert configured.requests  # every page asked the configured service
        assert at.error[0].value.startswith("GET /info answered 503: Service Unavailable")


def test_the_local_development_switch_adds_the_url_field(
    monkeypatch: pytest.MonkeyPatch, small_data: Path
) -> None:
    monkeypatch.setenv("GAMEREC_API_URL", closed_url())
    monkeypatch.setenv("GAMEREC_DATA_DIR", str(small_data))
    monkeypatch.setenv(SWITCH, "true")
    with trap() as typed:
        at = AppTest.from_file(APP, default_timeout=60)
        at.run()
        at.text_input(key="api_url").input(typed.url).run()
        assert typed.requests[0].startswith("GET /games?")
        assert at.error[0].value == "GET /games answered 404: Not Found"  # not the page
        assert any(SWITCH in warning.value for warning in at.sidebar.warning)


def test_a_hostile_upstream_is_not_echoed_but_logged(caplog: pytest.LogCaptureFixture) -> None:
    with (
        trap() as hostile,
        caplog.at_level(logging.WARNING, "dashboard.client"),
        pytest.raises(ServiceError) as error,
    ):
        GameRecClient(hostile.url).info()
    assert str(error.value) == "GET /info answered 404: Not Found"
    assert error.value.status == 404
    assert SECRET in caplog.text  # for whoever runs the dashboard


def test_redirects_are_not_followed() -> None:
    with trap() as elsewhere, trap(302, headers={"Location": elsewhere.url}) as redirecting:
        with pytest.raises(ServiceError, match="answered with no JSON"):
            GameRecClient(redirecting.url).info()
        assert elsewhere.requests == []


def test_error_messages_are_not_rendered_as_markdown(monkeypatch: pytest.MonkeyPatch) -> None:
    body = json.dumps({"error": "see ![x](http://evil/x.png) and [here](http://evil)"})
    with trap(404, body.encode(), "application/json") as service:
        monkeypatch.setenv("GAMEREC_API_URL", service.url)
        monkeypatch.delenv(SWITCH, raising=False)
        at = AppTest.from_file(APP, default_timeout=60)
        at.run()
    assert at.error[0].value == (
        r"GET /games answered 404: see !\[x\](http://evil/x.png) and \[here\](http://evil)"
    )


# ------------------------------------------------------------ the Players page's data


def test_hold_out_keeps_at_least_one_game_sent() -> None:
    def held(n: int, fraction: float) -> int:
        return int(players.hold_out(pd.DataFrame({"game_id": range(n)}), fraction).sum())

    assert [held(n, 0.2) for n in (1, 2, 5, 10, 11)] == [0, 1, 1, 2, 2]
    assert held(10, 0.0) == 0
    assert held(3, 0.5) == 2
    frame = pd.DataFrame({"game_id": range(20)})
    assert players.hold_out(frame, 0.3).equals(players.hold_out(frame, 0.3))  # reproducible


def test_recommend_body_is_json(small_data: Path) -> None:
    data = players.load(small_data)
    user = players.active_players(data.interactions).index[0]
    history = players.history(data, user)
    body = players.recommend_body(user, history, top_k=5)
    assert json.loads(json.dumps(body)) == body
    assert set(body["time_played"]) == set(history["game_id"])
    assert data.name == "synthetic-small"


# ------------------------------------------------------------ a real TCP relay


@contextmanager
def tcp_relay(port: int, target_url: str) -> Iterator[None]:
    """Forward 127.0.0.1:`port` to the service: it "comes back" at an address that was dead."""
    target = urlsplit(target_url)

    class Forward(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with socket.create_connection((target.hostname, target.port)) as upstream:
                back = threading.Thread(target=_pipe, args=(upstream, self.request), daemon=True)
                back.start()
                _pipe(self.request, upstream)
                back.join(timeout=30)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Forward)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


# ------------------------------------------------------------ a trap: a host no one should call


@dataclass
class Trap:
    url: str
    requests: list[str] = field(default_factory=list)  # "GET /info", in order


@contextmanager
def trap(
    status: int = 404,
    body: bytes = HOSTILE_PAGE,
    content_type: str = "text/html",
    headers: dict[str, str] | None = None,
) -> Iterator[Trap]:
    """A local HTTP server that records every request and answers each the same way."""

    class Record(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            recorded.requests.append(f"{self.command} {self.path}")
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status)
            for name, value in {"Content-Type": content_type, **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet

    server = ThreadingHTTPServer(("127.0.0.1", 0), Record)
    server.daemon_threads = True
    recorded = Trap(f"http://127.0.0.1:{server.server_address[1]}")
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield recorded
    finally:
        server.shutdown()
        server.server_close()
