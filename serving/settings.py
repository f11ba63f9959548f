"""The service's settings: `configs/service.yaml`, and the service's environment variables.

This is the one place the service reads `GAMEREC_*` variables (the dashboard, a separate
program, reads its own in `dashboard/settings.py`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from training.config import CONFIG_DIR, ConfigError, Strict, load_yaml, validate


class ServiceEnvironment(BaseSettings):
    """`GAMEREC_SERVICE_CONFIG`, `GAMEREC_MODEL_TAG` and `GAMEREC_ADMIN_TOKEN`; unset means "not
    given"."""

    model_config = SettingsConfigDict(env_prefix="GAMEREC_", extra="ignore")

    service_config: Path | None = Field(
        None, description="a service.yaml to read instead of configs/service.yaml"
    )
    model_tag: str | None = Field(None, description="overrides `model_tag` of service.yaml")
    admin_token: SecretStr = Field(
        SecretStr(""), description="bearer token of /admin/*; unset, those endpoints answer 403"
    )


class BatchingConfig(Strict):
    max_batch_size: int = Field(ge=1, description="users per call of the batched service")
    max_latency_ms: int = Field(
        ge=1, description="BentoML answers 503 when it expects a batch to wait longer"
    )
    inline_budget_ms: float = Field(
        ge=0,
        description="in_process: a call whose search should take at most this runs on the "
        "event loop, a longer one on a worker thread",
    )


class LimitsConfig(Strict):
    max_body_bytes: int = Field(ge=1024, description="larger bodies get 413 unread")
    max_history: int = Field(ge=1, description="games in time_played or achievements")
    max_minutes: float = Field(gt=0, description="minutes played per game")
    max_top_k: int = Field(ge=1)
    max_batch_requests: int = Field(ge=1, description="requests in one /recommend_batch")
    max_id_length: int = Field(ge=1, description="characters in a user, game or genre id")
    max_genres: int = Field(ge=0)
    max_games_page: int = Field(ge=1, description="games in one answer of GET /games")


class EmbedderConfig(Strict):
    """How the entry service calls the inner (Embedder) service, and rides out its restart."""

    max_calls_in_flight: int = Field(
        ge=1, description="calls out at once; queries waiting meanwhile go out together"
    )
    retry_s: float = Field(ge=0, description="retry a refused call for this long")
    retry_interval_s: float = Field(gt=0)
    probe_timeout_s: int = Field(ge=1, description="/readyz: the Embedder must answer in this")


class AdmissionConfig(Strict):
    """How many requests the entry workers answer at once; beyond, 503 (serving/guard.py)."""

    max_in_flight: int = Field(
        ge=1, description="requests in flight in all entry workers together; more get 503"
    )
    retry_after_s: int = Field(ge=1, description="the 503's Retry-After header, seconds")


class ConnectionsConfig(Strict):
    """What a client connection may hold of an entry worker (serving/bentoml_fixes.py, fix 9)."""

    header_timeout_s: float = Field(
        gt=0, description="a request's headers must arrive within this, else 408 and close"
    )
    body_timeout_s: float = Field(
        gt=0, description="its body within this after the headers, else 408 and close"
    )
    keep_alive_s: int = Field(ge=1, description="an idle keep-alive connection is closed after")
    max_connections: int = Field(
        ge=1, description="open connections per entry worker; one more is closed at once"
    )
    balance_interval_s: float = Field(
        ge=0,
        description="entry workers compare their connection counts this often; one over its "
        "share closes a keep-alive connection after a response (fix 10; 0: never)",
    )


class ReloadConfig(Strict):
    """How a reload received by one entry worker reaches the others (serving/reload.py)."""

    poll_interval_s: float = Field(gt=0, description="each worker reads the wanted tag this often")


Placement = Literal["embedder", "in_process"]


class ServiceSettings(Strict):
    model_tag: str
    placement: Placement | Literal["auto"] = Field(
        description="where the batched runner runs: its own service, or in each entry worker"
    )
    in_process_max_games: int = Field(
        ge=0, description="placement auto: in_process up to this catalog size, embedder above"
    )
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        description="processes of the HTTP entry service; auto: from the cores"
    )
    torch_threads: int = Field(ge=1)
    faiss_threads: int = Field(ge=1)
    trace_recommend: bool = Field(description="OpenTelemetry spans for the /recommend routes")
    access_log: bool = Field(description="a log line per request of the entry service")
    request_timeout_s: float = Field(gt=0, description="BentoML answers 504 after this")
    model_versions_kept: int = Field(
        ge=2, description="versions each process keeps loaded: the served one and the previous"
    )
    batching: BatchingConfig
    embedder: EmbedderConfig
    reload: ReloadConfig
    limits: LimitsConfig
    admission: AdmissionConfig
    connections: ConnectionsConfig
    admin_token: SecretStr = Field(description="from GAMEREC_ADMIN_TOKEN only, never the file")


def load_service_settings(path: Path | str | None = None) -> ServiceSettings:
    """`path`, else `GAMEREC_SERVICE_CONFIG`, else `configs/service.yaml`; with the
    environment's model tag and admin token."""
    environment = ServiceEnvironment()
    path = Path(path or environment.service_config or CONFIG_DIR / "service.yaml")
    raw = load_yaml(path)
    if "admin_token" in raw:
        raise ConfigError(f"{path}: admin_token is a secret: set GAMEREC_ADMIN_TOKEN instead")
    raw["admin_token"] = environment.admin_token
    if environment.model_tag:
        raw["model_tag"] = environment.model_tag
    return validate(ServiceSettings, raw, path)


@functools.cache
def service_settings() -> ServiceSettings:
    """This process's settings, read once."""
    return load_service_settings()
