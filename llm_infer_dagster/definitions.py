"""The code location Dagster loads (``workspace.yaml``, ``pyproject.toml``, ``dagster job execute -m``).

Only wiring, and lazy: nothing is read at import. When Dagster loads the location, ``defs`` builds the
definitions of the deployment recorded in the output folder that ``LLM_INFER_OUTPUT`` names (or whose
``.dagster`` instance ``DAGSTER_HOME`` is); without one, of the ``LLM_INFER_*`` variables
(:meth:`~llm_infer_dagster.deployment.Deployment.load`).
"""

import dagster as dg

from llm_infer_dagster.orchestration.definitions import build_definitions


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
