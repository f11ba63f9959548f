"""Data sets: the synthetic default, Steam importers and the processed Parquet layout."""

from training.data.io import (
    Dataset,
    atomic_write_bytes,
    atomic_write_text,
    load_dataset,
    write_dataset,
)

__all__ = ["Dataset", "atomic_write_bytes", "atomic_write_text", "load_dataset", "write_dataset"]
