"""The pool's `provider_config` for Kubernetes: validated once, then read as a typed object."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_KNOWN = {
    "kubeconfig",
    "context",
    "in_cluster",
    "namespace",
    "create_namespace",
    "gpu_resource",
    "gpu_product_label",
    "gpu_product",
    "node_selector",
    "tolerations",
    "image_pull_secrets",
    "service_type",
    "external_host",
    "model_cache_pvc",
    "model_cache_mount",
    "cluster_domain",
    "unschedulable_timeout_s",
    "unready_timeout_s",
    "liveness_initial_delay_s",
    "request_timeout_s",
    "cleanup_orphans",
    "cpu",
    "memory",
}


@dataclass(frozen=True)
class KubeConfig:
    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False
    namespace: str = "inferia"
    create_namespace: bool = True
    gpu_resource: str = "nvidia.com/gpu"
    gpu_product_label: str = "nvidia.com/gpu.product"
    gpu_product: str | None = None  # pin every replica to one GPU product
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    image_pull_secrets: list[str] = field(default_factory=list)
    service_type: str = "ClusterIP"
    external_host: str | None = None  # NodePort: the address clients reach the nodes at
    model_cache_pvc: str | None = None
    model_cache_mount: str | None = None  # default: the engine's cache directory
    cluster_domain: str = "cluster.local"
    unschedulable_timeout_s: float = 300.0  # an unschedulable pod fails its node after this long
    # a pod that was ready and turns not ready: out of the routing table at once, failed (replaced) only
    # when it stays not ready this long (a slow /health under load is a blip, not a death)
    unready_timeout_s: float = 30.0
    liveness_initial_delay_s: int = 600  # large models load for minutes before /health answers
    request_timeout_s: float = 30.0
    cpu: str | None = None  # requests for the engine container, e.g. "4"
    memory: str | None = None  # e.g. "32Gi"


def _str(cfg: dict[str, Any], key: str) -> str | None:
    v = cfg.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise ValueError(f"{key}: must be a non-empty string")
    return v


def _num(cfg: dict[str, Any], key: str, default: float, minimum: float = 0.0) -> float:
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or v < minimum:
        raise ValueError(f"{key}: must be a number >= {minimum}")
    return float(v)


def parse(cfg: dict[str, Any]) -> KubeConfig:
    """Raise ValueError naming the bad key."""
    unknown = sorted(set(cfg) - _KNOWN)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key for the kubernetes provider")
    in_cluster = cfg.get("in_cluster", False)
    if not isinstance(in_cluster, bool):
        raise ValueError("in_cluster: must be true or false")
    kubeconfig = _str(cfg, "kubeconfig")
    if in_cluster and kubeconfig:
        raise ValueError("in_cluster: give either in_cluster or kubeconfig, not both")
    namespace = _str(cfg, "namespace") or "inferia"
    if len(namespace) > 63 or not _DNS_LABEL.match(namespace):
        raise ValueError("namespace: must be a DNS label (lowercase letters, digits, '-'; at most 63)")
    create_ns = cfg.get("create_namespace", True)
    if not isinstance(create_ns, bool):
        raise ValueError("create_namespace: must be true or false")
    service_type = cfg.get("service_type", "ClusterIP")
    if service_type not in SERVICE_TYPES:
        raise ValueError(f"service_type: must be one of {', '.join(SERVICE_TYPES)}")
    selector = cfg.get("node_selector", {}) or {}
    if not isinstance(selector, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in selector.items()
    ):
        raise ValueError("node_selector: must map label names to string values")
    tolerations = cfg.get("tolerations", []) or []
    if not isinstance(tolerations, list) or not all(isinstance(t, dict) for t in tolerations):
        raise ValueError("tolerations: must be a list of objects (key, operator, value, effect)")
    for t in tolerations:
        bad = set(t) - {"key", "operator", "value", "effect", "tolerationSeconds"}
        if bad:
            raise ValueError(f"tolerations: unknown field {sorted(bad)[0]!r}")
    pulls = cfg.get("image_pull_secrets", []) or []
    if not isinstance(pulls, list) or not all(isinstance(p, str) and p for p in pulls):
        raise ValueError("image_pull_secrets: must be a list of secret names")
    domain = _str(cfg, "cluster_domain") or "cluster.local"
    return KubeConfig(
        kubeconfig=kubeconfig,
        context=_str(cfg, "context"),
        in_cluster=in_cluster,
        namespace=namespace,
        create_namespace=create_ns,
        gpu_resource=_str(cfg, "gpu_resource") or "nvidia.com/gpu",
        gpu_product_label=_str(cfg, "gpu_product_label") or "nvidia.com/gpu.product",
        gpu_product=_str(cfg, "gpu_product"),
        node_selector=dict(selector),
        tolerations=[dict(t) for t in tolerations],
        image_pull_secrets=list(pulls),
        service_type=service_type,
        external_host=_str(cfg, "external_host"),
        model_cache_pvc=_str(cfg, "model_cache_pvc"),
        model_cache_mount=_str(cfg, "model_cache_mount"),
        cluster_domain=domain,
        unschedulable_timeout_s=_num(cfg, "unschedulable_timeout_s", 300.0),
        unready_timeout_s=_num(cfg, "unready_timeout_s", 30.0),
        liveness_initial_delay_s=int(_num(cfg, "liveness_initial_delay_s", 600)),
        request_timeout_s=_num(cfg, "request_timeout_s", 30.0, minimum=1.0),
        cpu=_str(cfg, "cpu"),
        memory=_str(cfg, "memory"),
    )
