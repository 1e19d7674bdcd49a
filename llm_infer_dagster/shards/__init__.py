"""Shards, without Dagster: stable keys and row ranges, the manifest, Parquet tables and the pure
raw/prompts/answers frame transforms, the store (atomic writes), the seed's results/ export, file locks."""
