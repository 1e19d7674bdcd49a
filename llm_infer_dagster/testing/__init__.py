"""Helpers for tests, benchmarks and the demo: a tiny real model built offline, no model hub."""
