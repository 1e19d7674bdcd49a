"""Errors a user can fix. They carry a one-line message that says what, where and how to fix it."""


class LLMInferError(Exception):
    """Base for user-facing errors; the CLI prints the message without a traceback."""


class TaskConfigError(LLMInferError):
    """A task folder, its functions, its data or its sampling parameters are wrong."""


class SettingsError(LLMInferError):
    """Model, engine or path settings that cannot work (e.g. more GPUs than the machine has)."""
