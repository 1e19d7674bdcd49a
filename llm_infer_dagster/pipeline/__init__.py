"""The streaming loop, without Dagster: raw -> prompts -> completions -> answers over a worker pool.

``stream.py`` runs a task's shards through the selected steps and reports each shard the moment it lands
(``events.py``: what it reports and to whom). ``orchestration/assets/pipeline.py`` is the Dagster adapter that
turns those reports into materializations (with provenance) and asset check evaluations. Layer: above
``tasks``, ``shards``, ``engines``, ``runtime`` and ``deployment.py``; below ``orchestration``.
"""
