"""Integration tests: one trained model, one shared server for the tests that only read."""
