"""The index's own settings: the `index:` section of `configs/training.yaml` holds their values."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

IndexType = Literal["auto", "flat", "ivf", "ivfpq", "ivfsq", "ivf_fastscan", "hnsw"]
ApproximateType = Literal["ivfsq", "ivf_fastscan"]


class IndexConfig(BaseModel):
    """Which FAISS index to build over the item embeddings, and its parameters."""

    model_config = ConfigDict(extra="forbid")

    type: IndexType = Field(
        description="auto: exact while fast enough, else `approximate` tuned to recall_target"
    )
    approximate: ApproximateType = Field(
        description="the index auto builds past exact_budget_ms, nprobe tuned to recall_target"
    )
    nlist: int = Field(ge=0, description="IVF lists; 0 picks about 2*sqrt(n)")
    nprobe: int = Field(ge=1, description="IVF lists searched per query (auto tunes it)")
    pq_m: int = Field(ge=1, description="PQ sub-quantizers; must divide embedding_dim")
    pq_bits: int = Field(ge=4, le=12)
    hnsw_m: int = Field(ge=4)
    hnsw_ef_search: int = Field(ge=8)
    hnsw_ef_construction: int = Field(ge=8)
    recall_queries: int = Field(ge=10, description="queries used to measure recall against exact")
    recall_target: float = Field(
        gt=0.0, le=1.0, description="recall@10 against exact search an index must reach"
    )
    recall_margin: float = Field(
        ge=0.0,
        lt=1.0,
        description="auto tunes nprobe to recall_target + recall_margin on its queries, so that "
        "queries it did not tune on reach the target too",
    )
    exact_budget_ms: float = Field(
        gt=0.0, description="auto keeps exact search while a query takes at most this CPU ms"
    )
    refine_factor: int = Field(
        ge=1, description="ivfsq, ivf_fastscan: refine_factor * k candidates re-ranked exactly"
    )
    max_probe_fraction: float = Field(
        gt=0.0, le=1.0, description="auto raises nprobe to at most this fraction of nlist"
    )
