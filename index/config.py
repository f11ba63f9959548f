"""The index's own settings: the `index:` section of `configs/training.yaml` holds their values."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class IndexConfig(BaseModel):
    """Which FAISS index to build over the item embeddings, and its parameters."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["flat", "ivf", "ivfpq", "hnsw"]
    nlist: int = Field(ge=0, description="IVF lists; 0 picks about 4*sqrt(n)")
    nprobe: int = Field(ge=1)
    pq_m: int = Field(ge=1, description="PQ sub-quantizers; must divide embedding_dim")
    pq_bits: int = Field(ge=4, le=12)
    hnsw_m: int = Field(ge=4)
    hnsw_ef_search: int = Field(ge=8)
    hnsw_ef_construction: int = Field(ge=8)
    recall_queries: int = Field(ge=10, description="queries used to measure recall against exact")
