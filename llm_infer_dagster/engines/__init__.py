"""Inference backends, without Dagster or tasks. Each takes prompts plus merged sampling parameters and
returns every sample."""
