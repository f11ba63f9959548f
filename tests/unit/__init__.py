"""Unit tests: no training, no server."""
