"""The provider adapter contract: one async class per provider, one instance per pool."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar


class ProviderError(Exception):
    """Base of every error an adapter raises; the message must never contain a secret."""


class TemporaryProviderError(ProviderError):
    """Retry with backoff: rate limits, 5xx, timeouts, capacity that may come back."""


class PermanentProviderError(ProviderError):
    """Do not retry: bad config, missing engine, auth refused. The message is shown to the user."""


@dataclass(frozen=True)
class Capabilities:
    ephemeral: bool = False
    spot: bool = False
    needs_sidecar: bool = False
    container_native: bool = False
    gpus: bool = False
    # the provider itself reports node health (watch_health) instead of a node agent heartbeating
    reports_health: bool = False
    # a node's endpoint may move after provisioning (a Nosana redeploy: the new job's URL), reported by
    # heartbeats and accepted when `accepts_endpoint` does (actors/endpoints.py); otherwise it is fixed
    endpoint_moves: bool = False


@dataclass(frozen=True)
class ResourceOffer:
    provider: str
    region: str
    gpu_type: str | None = None
    gpu_count: int = 0
    gpu_memory_mb: int = 0
    vcpu: int = 0
    ram_mb: int = 0
    price_per_hour: float = 0.0
    available: int = 1
    spot: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkloadSpec:
    """What the node runs: an engine serving one model on one port."""

    deployment_id: str
    model_name: str
    engine: str  # llamacpp | vllm | ollama | custom
    image: str | None = None
    source: str | None = None  # HF id, GGUF path, ollama tag
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    port: int | None = None  # None: the provider picks
    health_path: str | None = None
    gpus: int = 0
    inference_key: str | None = None  # the deployment's own key, given to the engine

    def __repr__(self) -> str:  # never print the key
        return (
            f"WorkloadSpec(deployment_id={self.deployment_id!r}, model_name={self.model_name!r}, "
            f"engine={self.engine!r}, source={self.source!r}, port={self.port!r})"
        )


@dataclass(frozen=True)
class ProvisionRequest:
    node_id: str
    pool_id: str
    heartbeat_url: str  # one URL, or several comma-separated in order (INFERIA_API_URLS): the agent fails over
    node_token: str
    heartbeat_interval_s: float
    workload: WorkloadSpec | None = None  # None: an idle node (capacity only)
    heartbeat_fallback_url: str | None = None  # where to post when heartbeat_url is unreachable
    offer: ResourceOffer | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"ProvisionRequest(node_id={self.node_id!r}, pool_id={self.pool_id!r}, workload={self.workload!r})"


@dataclass(frozen=True)
class NodeRef:
    node_id: str
    pool_id: str
    provider_instance_id: str | None = None


class ProviderNodeStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    TERMINATED = "terminated"  # confirmed gone
    FAILED = "failed"  # confirmed failed (crash loop, image pull, ...)
    UNKNOWN = "unknown"  # could not tell: never act on this


@dataclass(frozen=True)
class NodeStatus:
    status: ProviderNodeStatus
    reason: str | None = None


@dataclass(frozen=True)
class ProvisionedNode:
    node_id: str
    pool_id: str
    provider_instance_id: str
    endpoint: str | None = None  # base URL of the engine, e.g. http://127.0.0.1:8123
    ip_address: str | None = None
    gpu_type: str | None = None
    gpu_count: int = 0
    vcpu: int = 0
    ram_mb: int = 0
    price_per_hour: float = 0.0
    deployment_id: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeHealth:
    """One node's health as the provider sees it (e.g. a pod's readiness), turned into a heartbeat."""

    node_id: str
    state: str  # starting | ready | failed
    endpoint: str | None = None
    reason: str | None = None
    health_score: int = 100


HealthReporter = Callable[[list[NodeHealth]], Awaitable[None]]


class ProviderAdapter(ABC):
    """Async provider contract. Every method is idempotent; errors are ProviderError subclasses."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, pool_id: str, config: dict[str, Any] | None = None, data_dir: str | None = None) -> None:
        self.pool_id = pool_id
        self.config = dict(config or {})
        self.data_dir = data_dir

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Raise ValueError naming the bad key; return the normalised config."""
        return config

    @classmethod
    def accepts_endpoint(cls, url: str) -> bool:
        """For `endpoint_moves` providers: whether a heartbeat may move a node's endpoint to this URL (the
        control plane's own addresses and loopback/link-local ones are refused before this is asked)."""
        return False

    @abstractmethod
    async def discover_resources(self) -> list[ResourceOffer]: ...

    @abstractmethod
    async def provision_node(self, req: ProvisionRequest) -> ProvisionedNode:
        """Idempotent by req.node_id: a retry finds what the first try created."""

    @abstractmethod
    async def deprovision_node(self, node: NodeRef) -> None:
        """'Already gone' is success."""

    @abstractmethod
    async def get_node_status(self, node: NodeRef) -> NodeStatus:
        """UNKNOWN on transient errors."""

    @abstractmethod
    async def list_nodes(self, pool_id: str) -> list[ProvisionedNode]:
        """Provider truth: every node this pool created that still exists."""

    @abstractmethod
    async def get_logs(self, node: NodeRef, tail: int = 100) -> list[str]: ...

    async def watch_health(self, report: HealthReporter) -> None:  # noqa: B027 - optional hook
        """For `reports_health` providers: run until cancelled, calling `report` with every change of
        the nodes' health (and a full list after each (re)list). The pool turns each report into
        heartbeats for those nodes and repeats the last known health every heartbeat interval while
        this method runs. Raise to have it restarted with backoff. Default: node agents heartbeat."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients; default: nothing to release."""
