"""The dashboard's settings: its environment variables, read here and nowhere else.

The dashboard is a separate program from the service (an HTTP client of it), so it reads its
own two variables rather than the service's settings.
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


def dashboard_settings() -> DashboardSettings:
    """Read anew on each call: a Streamlit script reruns on every interaction."""
    return DashboardSettings()
