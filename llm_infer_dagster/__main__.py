"""``python -m llm_infer_dagster`` is ``llm-infer``."""

import sys

from llm_infer_dagster.cli import main

if __name__ == "__main__":
    sys.exit(main())
