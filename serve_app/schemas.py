"""Request bodies of the HTTP API (pydantic): validation errors become 422 naming the field."""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from adapters.engines import ENGINE_NAMES

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
ENGINES = ENGINE_NAMES  # the engine catalog (adapters/engines.py)
EngineName = Literal["llamacpp", "llamacpp-python", "vllm", "ollama", "custom"]


def _name(v: str) -> str:
    if not NAME_RE.fullmatch(v):
        raise ValueError("must be 1-63 chars of lowercase letters, digits, '.', '_' or '-', starting and ending alnum")
    return v


def _find_nul(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            hit = _find_nul(k, path) or _find_nul(v, f"{path}.{k}" if path else str(k))
            if hit is not None:
                return hit
    if isinstance(value, list):
        for i, v in enumerate(value):
            hit = _find_nul(v, f"{path}.{i}" if path else str(i))
            if hit is not None:
                return hit
    return None


def _find_non_finite(value: Any, path: str) -> str | None:
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        for k, v in value.items():
            hit = _find_non_finite(v, f"{path}.{k}")
            if hit is not None:
                return hit
    if isinstance(value, list):
        for i, v in enumerate(value):
            hit = _find_non_finite(v, f"{path}.{i}")
            if hit is not None:
                return hit
    return None


class Strict(BaseModel):
    # allow_inf_nan=False: JSON's 1e400 decodes to inf, which no column or JSON answer can hold
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        hit = _find_nul(data, "")
        if hit is not None:
            raise ValueError(f"{hit or 'body'}: NUL characters are not allowed")
        return data


class PoolCreate(Strict):
    name: str
    provider: str = "local"
    region: str = "local"
    allowed_gpu_types: list[str] = Field(default_factory=list)
    min_nodes: int = Field(default=0, ge=0, le=10_000)
    max_nodes: int = Field(default=16, ge=0, le=10_000)
    target_nodes: int = Field(default=0, ge=0, le=10_000)
    max_cost_per_hour: float | None = Field(default=None, ge=0)
    provider_config: dict[str, Any] = Field(default_factory=dict)
    credential_ref: str | None = None

    _n = field_validator("name")(_name)

    @field_validator("provider_config")
    @classmethod
    def _finite(cls, v: dict[str, Any]) -> dict[str, Any]:
        hit = _find_non_finite(v, "provider_config")
        if hit is not None:
            raise ValueError(f"{hit}: must be a finite number")
        return v

    @field_validator("max_nodes")
    @classmethod
    def _max(cls, v: int, info: ValidationInfo) -> int:
        if "min_nodes" in info.data and info.data["min_nodes"] > v:
            raise ValueError("min_nodes must be <= max_nodes")
        return v

    @field_validator("target_nodes")
    @classmethod
    def _target(cls, v: int, info: ValidationInfo) -> int:
        if "max_nodes" in info.data and v > info.data["max_nodes"]:
            raise ValueError("target_nodes must be <= max_nodes")
        return v


class PoolScale(Strict):
    target_nodes: int = Field(ge=0, le=10_000)


class PoolPatch(Strict):
    """PATCH /v1/pools/{ref}: only the fields given change; provider_config entries are merged (null removes one)."""

    min_nodes: int | None = Field(default=None, ge=0, le=10_000)
    max_nodes: int | None = Field(default=None, ge=0, le=10_000)
    target_nodes: int | None = Field(default=None, ge=0, le=10_000)
    max_cost_per_hour: float | None = Field(default=None, ge=0)
    allowed_gpu_types: list[str] | None = Field(default=None, max_length=100)
    provider_config: dict[str, Any] | None = None

    @field_validator("provider_config")
    @classmethod
    def _finite(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        hit = None if v is None else _find_non_finite(v, "provider_config")
        if hit is not None:
            raise ValueError(f"{hit}: must be a finite number")
        return v

    @field_validator("allowed_gpu_types")
    @classmethod
    def _gpu_types(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any(not t or len(t) > 64 for t in v):
            raise ValueError("each GPU type must be 1-64 characters")
        return v


class ModelCreate(Strict):
    name: str
    engine: EngineName
    image: str | None = None
    source: str | None = Field(default=None, description="HF id, GGUF path or ollama tag", validate_default=True)
    args: list[str] = Field(default_factory=list, validate_default=True)
    env: dict[str, str] = Field(default_factory=dict)
    port: int | None = Field(default=None, ge=1, le=65535)
    health_path: str | None = None
    gpus: int = Field(default=0, ge=0, le=64)
    gpu_memory_mb: int = Field(default=0, ge=0, le=2**31 - 1)  # an INTEGER column

    _n = field_validator("name")(_name)

    @field_validator("health_path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v

    @field_validator("source", mode="after")
    @classmethod
    def _source(cls, v: str | None, info: ValidationInfo) -> str | None:
        engine = info.data.get("engine")
        if engine is not None and engine != "custom" and not v:
            raise ValueError(f"source is required for engine {engine}")
        return v

    @field_validator("args", mode="after")
    @classmethod
    def _args(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if info.data.get("engine") == "custom" and not v:
            raise ValueError("args (the command line) is required for engine custom")
        return v


class AutoscalingIn(Strict):
    """A deployment's autoscaling policy (actors/autoscaler.py). Omitted fields take their defaults on POST and
    keep their current values on PATCH; the rules between fields (min <= max, zero only with
    scale_to_zero_after_s) are checked by AutoscalingPolicy.problems() in the route (422 naming the field)."""

    min_replicas: int | None = Field(default=None, ge=0, le=1000)
    max_replicas: int | None = Field(default=None, ge=1, le=1000)
    target_ongoing_requests: float | None = Field(default=None, gt=0, le=1_000_000)
    upscale_delay_s: float | None = Field(default=None, ge=0, le=86_400)
    downscale_delay_s: float | None = Field(default=None, ge=0, le=86_400)
    scale_to_zero_after_s: float | None = Field(default=None, gt=0, le=30 * 86_400)
    panic_factor: float | None = Field(default=None, gt=1, le=100)

    def given(self) -> dict[str, Any]:
        """The fields the client set (a null scale_to_zero_after_s included: it turns scale to zero off)."""
        return {k: getattr(self, k) for k in self.model_fields_set}


class DeploymentCreate(Strict):
    model: str = Field(description="model name or id in the registry")
    pool: str = Field(description="pool name or id")
    replicas: int = Field(default=1, ge=0, le=1000, description="with autoscaling: the initial target (default min)")
    rate_limit_rpm: int | None = Field(
        default=None, ge=1, le=1_000_000, description="requests per minute accepted with the inference key"
    )
    autoscaling: AutoscalingIn | None = Field(default=None, description="replicas follow the load (issue 11)")


class StrategyIn(Strict):
    """How a rolling update moves (issue 12): at most N + max_surge replicas alive, at least N - max_unavailable
    ready. Both 0 could not move at all."""

    max_surge: int = Field(default=1, ge=0, le=1000)
    max_unavailable: int = Field(default=0, ge=0, le=1000)

    @model_validator(mode="after")
    def _can_move(self) -> StrategyIn:
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError("max_surge and max_unavailable cannot both be 0")
        return self


# what runs: a change of any of these is a new generation, rolled out replica by replica
SPEC_PATCH_FIELDS = ("model", "args", "env", "image")


class DeploymentPatch(Strict):
    replicas: int | None = Field(default=None, ge=0, le=1000)
    rate_limit_rpm: int | None = Field(default=None, ge=1, le=1_000_000, description="null removes the limit")
    autoscaling: AutoscalingIn | None = Field(
        default=None, description="fields to set or change (merged with the current policy); null removes it"
    )
    model: str | None = Field(default=None, min_length=1, max_length=128, description="a registered model (name/id)")
    args: list[str] | None = Field(default=None, max_length=256, description="engine arguments; null: the model's")
    env: dict[str, str] | None = Field(default=None, description="merged over the model's environment")
    image: str | None = Field(default=None, min_length=1, max_length=512, description="null: the model's image")
    strategy: StrategyIn | None = None
    progress_deadline_s: float | None = Field(
        default=None, gt=0, le=86_400, description="roll back when no new replica is ready for this long"
    )

    @model_validator(mode="after")
    def _something(self) -> DeploymentPatch:
        if not self.model_fields_set:
            raise ValueError("give replicas, rate_limit_rpm, autoscaling, model, args, env and/or image")
        if "replicas" in self.model_fields_set and self.replicas is None:
            raise ValueError("replicas: must be an integer")
        if "model" in self.model_fields_set and self.model is None:
            raise ValueError("model: must be a registered model's name or id")
        spec = any(f in self.model_fields_set for f in SPEC_PATCH_FIELDS)
        for f in ("strategy", "progress_deadline_s"):
            if f in self.model_fields_set and not spec:
                raise ValueError(f"{f}: only with a change of model, args, env or image")
        return self

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and any(not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", k) for k in v):
            raise ValueError("variable names must be letters, digits and '_', not starting with a digit")
        return v


class RollbackIn(Strict):
    strategy: StrategyIn | None = None


class HeartbeatIn(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    node_id: str | None = Field(default=None, max_length=128)
    provider: str | None = Field(default=None, max_length=64)
    provider_instance_id: str | None = Field(default=None, max_length=256)
    previous_provider_instance_id: str | None = Field(default=None, max_length=256)
    token: str | None = Field(default=None, max_length=256, description="node token when batching")
    state: Literal["starting", "ready", "failed"] = "ready"
    health_score: int = Field(default=100, ge=0, le=100)
    endpoint: str | None = Field(default=None, max_length=512)
    reason: str | None = Field(default=None, max_length=1000)
    cpu_percent: float | None = Field(default=None, ge=0)
    ram_used_mb: float | None = Field(default=None, ge=0)
    gpu_util: float | None = Field(default=None, ge=0)
    gpu_mem_used_mb: float | None = Field(default=None, ge=0)
    # the engine's own queue, scraped by the agent from its Prometheus /metrics (absent: the engine has none)
    engine_running: float | None = Field(default=None, ge=0, le=1e9, description="requests the engine runs now")
    engine_waiting: float | None = Field(default=None, ge=0, le=1e9, description="requests queued in the engine")
    engine_kv_cache: float | None = Field(default=None, ge=0, le=1, description="KV-cache usage, 0..1")
    # optional (old agents and provider-relayed health send none): a beat not newer than the last applied one
    # of the same agent start is answered 200 and ignored
    seq: int | None = Field(default=None, ge=0, le=2**63 - 1, strict=True, description="per-node beat sequence number")
    start_id: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$", description="agent start id"
    )

    @model_validator(mode="after")
    def _identity(self) -> HeartbeatIn:
        if not self.node_id and not (self.provider and self.provider_instance_id):
            raise ValueError("node_id, or provider and provider_instance_id, is required")
        return self

    @field_validator("endpoint")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://", v):
            raise ValueError("must be an http(s) URL")
        return v

    def to_core(self, header_token: str | None) -> dict[str, Any]:
        metrics = {
            k: v
            for k, v in (
                ("cpu_percent", self.cpu_percent),
                ("ram_used_mb", self.ram_used_mb),
                ("gpu_util", self.gpu_util),
                ("gpu_mem_used_mb", self.gpu_mem_used_mb),
                ("engine_running", self.engine_running),
                ("engine_waiting", self.engine_waiting),
                ("engine_kv_cache", self.engine_kv_cache),
            )
            if v is not None
        }
        return {
            "token": self.token or header_token,
            "node_id": self.node_id,
            "provider": self.provider,
            "provider_instance_id": self.provider_instance_id,
            "previous_provider_instance_id": self.previous_provider_instance_id,
            "state": self.state,
            "health_score": self.health_score,
            "endpoint": self.endpoint,
            "reason": self.reason,
            "metrics": metrics,
            "seq": self.seq,
            "start_id": self.start_id,
        }


class HeartbeatBatch(BaseModel):
    heartbeats: list[HeartbeatIn] = Field(max_length=10_000)
