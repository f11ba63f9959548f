"""The dashboard's settings: its environment variables, read here and nowhere else.

The dashboard is a separate program from the service (an HTTP client of it), so it reads its
own variables rather than the service's settings. The service's address is deployment
configuration: a visitor of the page cannot change it, unless the local-development switch
`GAMEREC_DASHBOARD_ALLOW_URL_OVERRIDE` is on (otherwise any visitor could make the dashboard's
server request any host: server-side request forgery).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class DashboardSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GAMEREC_", extra="ignore")

    api_url: str = Field(
        "http://localhost:3000", description="GAMEREC_API_URL: the GameRec HTTP service"
    )
    data_dir: Path = Field(
        PROJECT_ROOT / "data" / "processed",
        description="GAMEREC_DATA_DIR: the processed data set of the Players page",
    )
    dashboard_allow_url_override: bool = Field(
        False,
        description="GAMEREC_DASHBOARD_ALLOW_URL_OVERRIDE: local development only, an editable "
        "Service URL field in the sidebar (never on a deployed dashboard)",
    )


def dashboard_settings() -> DashboardSettings:
    """Read anew on each call: a Streamlit script reruns on every interaction."""
    return DashboardSettings()
