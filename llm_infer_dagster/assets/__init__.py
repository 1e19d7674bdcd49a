"""Dagster assets: one bundle of four partitioned assets per task folder."""
