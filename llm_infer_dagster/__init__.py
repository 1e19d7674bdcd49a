"""llm-infer-dagster: offline LLM batch inference as partitioned Dagster assets."""
