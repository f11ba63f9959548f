"""Data sets: the synthetic default, Steam importers and the processed Parquet layout."""
