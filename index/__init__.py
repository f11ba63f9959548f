"""FAISS item indexes for GameRec: build, measure recall, save, load and search."""

from index.build import (
    IndexReport,
    build_and_measure,
    build_index,
    measure_recall,
    plan_index,
    sample_queries,
)
from index.load import read_index, search, write_index

__all__ = [
    "IndexReport",
    "build_and_measure",
    "build_index",
    "measure_recall",
    "plan_index",
    "read_index",
    "sample_queries",
    "search",
    "write_index",
]
