"""The GPU-aware Dagster executor: each step in its own process, GPU steps on host-wide GPU leases."""
