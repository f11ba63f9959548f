"""The dashboard's defences against server-side request forgery: its service address comes from
the deployment only, and its error messages never echo what an arbitrary upstream sent."""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import ValidationError

from dashboard.client import MAX_TEXT, error_message
from dashboard.settings import DashboardSettings

SWITCH = "GAMEREC_DASHBOARD_ALLOW_URL_OVERRIDE"
SECRET = "AKIA-SECRET-1234"

# ------------------------------------------------------------ settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (SWITCH, "GAMEREC_API_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_url_override_is_off_by_default(clean_env: pytest.MonkeyPatch) -> None:
    settings = DashboardSettings()
    assert settings.dashboard_allow_url_override is False
    assert settings.api_url == "http://localhost:3000"


@pytest.mark.parametrize(("value", "allowed"), [("true", True), ("1", True), ("false", False)])
def test_the_url_override_is_on_only_when_set(
    clean_env: pytest.MonkeyPatch, value: str, allowed: bool
) -> None:
    clean_env.setenv(SWITCH, value)
    clean_env.setenv("GAMEREC_API_URL", "http://gamerec.internal:3000")
    settings = DashboardSettings()
    assert settings.dashboard_allow_url_override is allowed
    assert settings.api_url == "http://gamerec.internal:3000"


def test_a_garbled_switch_is_refused_not_guessed(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(SWITCH, "maybe")
    with pytest.raises(ValidationError, match="dashboard_allow_url_override"):
        DashboardSettings()


# ------------------------------------------------------------ error messages


def answer(
    status: int, body: object, method: str = "GET", path: str = "/similar", **kwargs: object
) -> httpx.Response:
    """A response to `method path`; `body` as JSON, or as is when it is bytes."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = httpx.Request(method, f"http://gamerec.internal:3000{path}")
    return httpx.Response(status, content=content, request=request, **kwargs)


def test_gamerec_errors_are_shown() -> None:
    body = {"error": "game_id 'nope' is not in the catalog"}
    assert error_message(answer(404, body)) == (
        "GET /similar answered 404: game_id 'nope' is not in the catalog"
    )


def test_validation_errors_are_shown_briefly() -> None:
    bentoml = {
        "error": "1 validation error for Input",
        "detail": [{"type": "less_than_equal", "loc": ["top_k"], "msg": "Input should be <= 100"}],
    }
    assert error_message(answer(400, bentoml, "POST", "/recommend")) == (
        "POST /recommend answered 400: 1 validation error for Input; top_k: Input should be <= 100"
    )
    fastapi = {"detail": [{"loc": ["query", "top_k"], "msg": "too big", "input": "500"}] * 7}
    message = error_message(answer(422, fastapi))
    assert message.startswith("GET /similar answered 422: Unprocessable")
    assert message.count("query.top_k: too big") == 5
    assert message.endswith("; and 2 more")


HOSTILE = {
    "an HTML page": b"<html><body><h1>Internal admin</h1><p>" + SECRET.encode() + b"</p></body>",
    "cloud metadata": {"Code": "Success", "AccessKeyId": SECRET, "Token": "x"},
    "metadata beside an error": {"error": "Forbidden", "SecretAccessKey": SECRET},
    "a long error": {"error": SECRET + "x" * MAX_TEXT},
    "an error list": [{"error": SECRET}],
    "an error not a string": {"error": {"key": SECRET}},
    "a detail not GameRec's": {"detail": SECRET},
    "plain text": SECRET.encode(),
    "nothing": b"",
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_an_arbitrary_upstream_body_is_not_echoed(body: object) -> None:
    assert error_message(answer(403, body, path="/info")) == "GET /info answered 403: Forbidden"


def test_the_upstream_reason_phrase_is_not_echoed() -> None:
    hostile = answer(502, b"", extensions={"reason_phrase": SECRET.encode()})
    assert error_message(hostile) == "GET /similar answered 502: Bad Gateway"
    assert error_message(answer(599, b"")) == "GET /similar answered 599: error"


def test_a_gamerec_error_is_shown_on_one_line() -> None:
    body = {"error": "game_id 'a\nb'\x1b[31m is\tnot known"}
    assert (
        error_message(answer(404, body))
        == "GET /similar answered 404: game_id 'a b' [31m is not known"
    )
