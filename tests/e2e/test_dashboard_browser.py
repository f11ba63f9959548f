"""End to end in a real browser: `bentoml serve`, `streamlit run` and headless Chromium.

Needs /usr/bin/chromium (Debian's `chromium` package) and the `playwright` Python package; its
own browser download (`playwright install`) is not used. The screenshot is saved to
test-artifacts/dashboard.png. One dashboard and one browser serve the whole module; the
local-development switch's test starts a dashboard of its own.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import pytest

from dashboard.client import GameRecClient
from tests.integration.test_dashboard import SECRET, SWITCH, trap
from tests.servers import PROJECT_ROOT, free_port, running_process

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STREAMLIT = str(Path(sys.executable).with_name("streamlit"))
SCREENSHOT = PROJECT_ROOT / "test-artifacts" / "dashboard.png"

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} not found: apt-get install chromium", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed: pip install playwright"
)


@contextmanager
def running_dashboard(
    api_url: str, data_dir: Path, log: Path, allow_url_override: bool = False
) -> Iterator[str]:
    """`streamlit run dashboard/app.py` on a free port; yields its URL once it is healthy."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != SWITCH}
    env |= {"GAMEREC_API_URL": api_url, "GAMEREC_DATA_DIR": str(data_dir)}
    if allow_url_override:
        env[SWITCH] = "true"
    command = [STREAMLIT, "run", "dashboard/app.py", "--server.port", str(port)]
    command += ["--server.address", "127.0.0.1", "--server.headless", "true"]
    command += ["--browser.gatherUsageStats", "false"]
    url = f"http://127.0.0.1:{port}"
    with running_process(command, f"{url}/_stcore/health", env, log, timeout=60):
        yield url


@pytest.fixture(scope="module")
def dashboard(
    served: str, small_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The dashboard as deployed: on the shared service, the URL override off."""
    log = tmp_path_factory.mktemp("dashboard") / "streamlit.log"
    with running_dashboard(served, small_data, log) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sync_api.BrowserContext]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 1500},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: sync_api.BrowserContext) -> Iterator[sync_api.Page]:
    page = browser.new_page()
    try:
        yield page
    finally:
        page.close()


def searchable_game(client: GameRecClient) -> dict:
    """A popular game (not the most played) that a search by its full title finds first."""
    for game in client.games("", limit=20)["games"][1:]:
        if client.games(game["title"], limit=1)["games"][0] == game:
            return game
    raise AssertionError("no game is found first by its own title")


def test_recommend_in_a_browser(served: str, dashboard: str, page: sync_api.Page) -> None:
    client = GameRecClient(served)
    game = searchable_game(client)
    played = {"time_played": {game["game_id"]: 60.0}, "achievements": {game["game_id"]: 0}}
    body = {"user_id": "dashboard", **played, "genres": [], "top_k": 10}  # as the page sends
    expected = [r["title"] for r in client.recommend(body)["recommendations"]]
    recommend_through_the_page(page, dashboard, game["title"], expected)


def test_a_visitor_cannot_change_the_service_address(
    served: str, dashboard: str, page: sync_api.Page
) -> None:
    """No Service URL field, and URL parameters are ignored: the only host the dashboard's server
    calls is the configured one."""
    expect = sync_api.expect
    body = {"user_id": "dashboard", "time_played": {}, "achievements": {}, "genres": []}
    cold = GameRecClient(served).recommend({**body, "top_k": 10})["recommendations"]
    with trap() as elsewhere:
        names = ["api_url", "service_url", "url", "GAMEREC_API_URL", "api"]
        page.goto(f"{dashboard}/?{urlencode(dict.fromkeys(names, elsewhere.url))}")
        sidebar = page.get_by_test_id("stSidebar")
        expect(sidebar).to_contain_text(served, timeout=30_000)  # shown, read only
        expect(sidebar.get_by_role("textbox")).to_have_count(0)
        expect(page.get_by_label("Service URL")).to_have_count(0)
        page.get_by_role("button", name="Recommend").click()
        results = page.get_by_test_id("stDataFrame").first
        for recommended in cold[:3]:
            expect(results).to_contain_text(recommended["title"], timeout=30_000)
        sidebar.get_by_text("Model", exact=True).click()  # another page, the parameters kept
        expect(page.get_by_text("Evaluation on held-out players")).to_be_visible(timeout=30_000)
        assert "api_url=" in page.url
    assert elsewhere.requests == []
    expect(page.get_by_test_id("stException")).to_have_count(0)


def test_the_local_development_switch_shows_the_url_field(
    served: str, small_data: Path, tmp_path: Path, page: sync_api.Page
) -> None:
    """With the switch on, the field exists and is obeyed (so the trap above would have caught a
    request); what the other host answers is still not shown."""
    expect = sync_api.expect
    log = tmp_path / "streamlit.log"
    with trap() as typed, running_dashboard(served, small_data, log, True) as dashboard:
        page.goto(dashboard)
        field = page.get_by_label("Service URL")
        expect(field).to_have_value(served, timeout=30_000)
        field.fill(typed.url)
        field.press("Enter")
        alert = page.get_by_test_id("stAlert").filter(has_text="answered 404")
        expect(alert).to_contain_text("GET /games answered 404: Not Found", timeout=30_000)
        expect(page.get_by_text(SECRET)).to_have_count(0)
        assert typed.requests


def recommend_through_the_page(
    page: sync_api.Page, url: str, title: str, expected: list[str]
) -> None:
    expect = sync_api.expect
    page.goto(url)
    search = page.get_by_label("Search games by title")
    search.fill(title)
    search.press("Enter")
    chosen = page.get_by_role("combobox", name="Game")
    expect(chosen).to_have_value(re.compile(f"^{re.escape(title)} "), timeout=30_000)

    page.get_by_role("button", name="Add to profile").click()
    tables = page.get_by_test_id("stDataFrame")
    expect(tables.first).to_contain_text(title, timeout=30_000)  # the profile

    page.get_by_role("button", name="Recommend").click()
    expect(page.get_by_text("Recommendations", exact=True)).to_be_visible(timeout=30_000)
    results = tables.nth(1)
    for recommended in expected[:3]:
        expect(results).to_contain_text(recommended)
    expect(page.get_by_test_id("stException")).to_have_count(0)
    page.wait_for_timeout(500)  # let the table finish drawing before the screenshot
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOT, full_page=True)
