"""Plain records shared by the storage layer and the actors (dataclasses inside, pydantic at the edges)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from actors.states import DeploymentState, NodeState, PoolState


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str | None, digest: str | None) -> bool:
    if not secret or not digest:
        return False
    return hmac.compare_digest(hash_secret(secret), digest)


def mask(secret: str | None) -> str | None:
    if not secret:
        return None
    return secret[:4] + "…" + "*" * 6


@dataclass
class PoolRecord:
    id: str
    name: str
    provider: str
    region: str = "local"
    allowed_gpu_types: list[str] = field(default_factory=list)
    min_nodes: int = 0
    max_nodes: int = 16
    target_nodes: int = 0
    max_cost_per_hour: float | None = None
    provider_config: dict[str, Any] = field(default_factory=dict)
    credential_ref: str | None = None
    state: PoolState = PoolState.ACTIVE
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class NodeRecord:
    id: str
    pool_id: str
    provider: str
    state: NodeState
    token_hash: str
    provider_instance_id: str | None = None
    deployment_id: str | None = None
    state_reason: str | None = None
    gpu_type: str | None = None
    gpu_count: int = 0
    vcpu: int = 0
    ram_mb: int = 0
    ip_address: str | None = None
    endpoint: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    price_per_hour: float = 0.0
    last_heartbeat: datetime | None = None
    health_score: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("token_hash", None)
        return d


@dataclass
class ModelRecord:
    id: str
    name: str
    engine: str
    image: str | None = None
    source: str | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int | None = None
    health_path: str | None = None
    gpus: int = 0
    gpu_memory_mb: int = 0
    created_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DeploymentRecord:
    id: str
    model_id: str
    pool_id: str
    desired_replicas: int
    state: DeploymentState
    # the engine key: what the deployment's engines hold and the proxy sends them (sealed at rest by the Store,
    # plain in memory). Clients hold another key, the inference key, of which only the hash is stored.
    inference_key: str
    inference_key_hash: str
    generation: int = 1
    error: str | None = None
    delete_requested: bool = False
    rate_limit_rpm: int | None = None  # requests per minute accepted with the inference key (None: no limit)
    # the autoscaling policy (actors/autoscaler.py AutoscalingPolicy fields; None: a fixed replica count) and the
    # autoscaler's saved state (its timers and last decision: Autoscaler.state() plus "last")
    autoscaling: dict[str, Any] | None = None
    autoscaler_state: dict[str, Any] | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("inference_key", None)
        d.pop("inference_key_hash", None)
        state = d.pop("autoscaler_state", None) or {}
        d["autoscaler"] = state.get("last") if self.autoscaling else None  # the last decision and why
        return d


@dataclass
class ReplicaRecord:
    deployment_id: str
    node_id: str
    state: str
    generation: int = 1
    endpoint: str | None = None
    created_at: datetime | None = None


def workload_for(dep: DeploymentRecord, model: ModelRecord) -> dict[str, Any]:
    """What a deployment's nodes run (adapters.base.WorkloadSpec fields): built from Postgres alone, so a
    restarted pool can provision a node again with what it was created with."""
    return {
        "deployment_id": dep.id,
        "model_name": model.name,
        "engine": model.engine,
        "image": model.image,
        "source": model.source,
        "args": list(model.args),
        "env": dict(model.env),
        "port": model.port,
        "health_path": model.health_path,
        "gpus": model.gpus,
        "inference_key": dep.inference_key,
    }
