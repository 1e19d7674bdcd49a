"""The code location Dagster loads (``workspace.yaml``, ``pyproject.toml``, ``dagster job execute -m``).

Only wiring: :func:`~llm_infer_dagster.orchestration.definitions.build_definitions` reads the deployment once
and builds every task's assets, jobs, sensors and schedules.
"""

from llm_infer_dagster.orchestration.definitions import build_definitions

defs = build_definitions()
