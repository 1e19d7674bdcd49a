"""Run settings: what only decides how fast a run goes, the one Dagster resource a run configures.

The Launchpad (``resources.settings.config``), ``dagster job execute -c run.yaml`` and ``llm-infer``'s flags
set these per run; their defaults come from ``LLM_INFER_*`` variables when definitions are built. Nothing
here changes what a shard holds, so no run can make results under another code version than its assets
carry: which model, dtype, context length and task files is the :class:`~llm_infer_dagster.deployment.Deployment`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field, ValidationError, create_model, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llm_infer_dagster.deployment import ENV_PREFIX
from llm_infer_dagster.engines.preflight import parse_model_args
from llm_infer_dagster.errors import SettingsError
from llm_infer_dagster.runtime.workers import gpus_needed

#: The resource key runs configure: ``{"resources": {"settings": {"config": {...}}}}``.
RESOURCE_KEY = "settings"


class RunSettings(ConfigurableResource):
    """How a run uses the machine. Change any of them per run; none of them makes a shard stale."""

    workers: int = Field(default=1, ge=1, description="Engine processes (data parallel); LLM_INFER_WORKERS")
    tensor_parallel_size: int = Field(
        default=1, ge=1, description="GPUs per engine (vLLM); LLM_INFER_TENSOR_PARALLEL_SIZE"
    )
    use_cpu: bool = Field(default=False, description="Run the engines on CPU (no GPU leased); LLM_INFER_USE_CPU")
    batch_size: int = Field(default=32, ge=1, description="HF engine batch size; LLM_INFER_BATCH_SIZE")
    model_args: str = Field(
        default="{}",
        description="JSON object of engine tuning for vLLM, e.g. gpu_memory_utilization, enforce_eager, "
        "enable_prefix_caching, max_num_seqs; LLM_INFER_MODEL_ARGS",
    )
    timeout: int | None = Field(
        default=None, ge=1, description="Seconds a shard may generate before it fails (retried next run)"
    )
    ray_address: str | None = Field(
        default=None,
        description="Run the engine workers as Ray actors: 'local' (a Ray instance on this machine), 'auto' or "
        "'ray://host:port' (a cluster); unset: local processes; LLM_INFER_RAY_ADDRESS",
    )
    save_text: bool = Field(default=False, description="Also write results/text/<shard>.txt; LLM_INFER_SAVE_TEXT")

    @classmethod
    def from_env(cls, **overrides: Any) -> RunSettings:
        """Defaults from ``LLM_INFER_<FIELD>`` variables; a bad value is one SettingsError naming its variable."""
        try:
            values = _from_env_model()().model_dump(exclude_unset=True)
            return cls(**{**values, **overrides})
        except ValidationError as exc:
            raise SettingsError(
                "run setting "
                + "; ".join(
                    f"{ENV_PREFIX}{str(e['loc'][0]).upper()}={e.get('input')!r}: {e['msg']}" for e in exc.errors()
                )
            ) from None

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> RunSettings:
        """The settings a run resolves to: its resource config over the deployment's ``run_defaults`` over
        the environment's defaults."""
        configured = ((run_config.get("resources") or {}).get(RESOURCE_KEY) or {}).get("config") or {}
        return cls.from_env(**{**(defaults or {}), **configured})

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from llm_infer_dagster.runtime.ray_pool import check_ray_address  # no Ray import: only the check

        try:
            return check_ray_address(value)
        except SettingsError as exc:
            raise ValueError(str(exc)) from None

    @property
    def engine_args(self) -> dict[str, Any]:
        return parse_model_args(self.model_args)

    @property
    def gpus_per_run(self) -> int:
        """GPUs a model step leases: workers x tensor_parallel_size; none on CPU or on Ray (Ray places GPUs)."""
        return gpus_needed(self.workers, self.tensor_parallel_size, use_cpu=self.use_cpu, ray_address=self.ray_address)


@functools.cache
def shared_run_settings() -> RunSettings:
    """The one ``settings`` resource object of this process: every task's ``Definitions`` (each Component's
    too) carries this same object, so Dagster can merge them (it refuses two different objects under one key)."""
    return RunSettings.from_env()


@functools.cache  # built once: the executor resolves run settings for every step
def _from_env_model() -> type[BaseSettings]:
    """A pydantic-settings twin of :class:`RunSettings` (same fields), reading ``LLM_INFER_*``."""

    class _Base(BaseSettings):
        model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    fields: dict[str, Any] = {n: (f.annotation, f) for n, f in RunSettings.model_fields.items()}
    return create_model("RunSettingsFromEnv", __base__=_Base, **fields)
