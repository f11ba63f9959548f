"""Benchmarks, each printing a table: `python -m benchmarks.<name>` from the project root."""
