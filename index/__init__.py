"""FAISS item indexes for GameRec: build (or choose), measure recall, save, load and search."""

from index.auto import IndexReport, build_and_measure, choose_index
from index.build import (
    build_index,
    measure_recall,
    memory_bytes,
    plan_index,
    query_ms,
    sample_queries,
)
from index.config import IndexConfig
from index.load import index_bytes, read_index, search

__all__ = [
    "IndexConfig",
    "IndexReport",
    "build_and_measure",
    "build_index",
    "choose_index",
    "index_bytes",
    "measure_recall",
    "memory_bytes",
    "plan_index",
    "query_ms",
    "read_index",
    "sample_queries",
    "search",
]
