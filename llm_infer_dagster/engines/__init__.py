"""Inference backends. Each takes prompts plus merged sampling parameters and returns every sample."""
