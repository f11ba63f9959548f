"""End-to-end tests: a real browser, the container image, the real Steam data."""
