"""``python -m llm_infer_dagster`` is ``llm-infer``."""

import os
import sys

# `python -m` puts the working directory first on sys.path: a `concurrent.py` or `json.py` there would shadow
# the standard library for everything imported below. The package itself is imported already.
if not sys.flags.safe_path and sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from llm_infer_dagster.orchestration.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
