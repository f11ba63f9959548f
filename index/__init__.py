"""FAISS item indexes for GameRec: build, measure recall, save, load and search."""

from index.build import (
    IndexReport,
    build_and_measure,
    build_index,
    measure_recall,
    plan_index,
    sample_queries,
)
from index.config import IndexConfig
from index.load import index_bytes, read_index, search

__all__ = [
    "IndexConfig",
    "IndexReport",
    "build_and_measure",
    "build_index",
    "index_bytes",
    "measure_recall",
    "plan_index",
    "read_index",
    "sample_queries",
    "search",
]
