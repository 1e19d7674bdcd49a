"""The process runtime, without Dagster or tasks: GPU ids and the one need check, host-wide GPU leases and
their inheritance by a process tree, the engine worker pool, the worker, and the messages between them."""
