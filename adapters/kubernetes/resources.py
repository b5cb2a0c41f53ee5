"""discover_resources: GPU nodes grouped by product, with allocatable and free GPUs, CPU and memory."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

from adapters.base import ResourceOffer
from adapters.kubernetes.config import KubeConfig


def _q(value: Any) -> Decimal:
    try:
        return Decimal(parse_quantity(value)) if value is not None else Decimal(0)
    except (ValueError, TypeError, ArithmeticError):
        return Decimal(0)


def _node_ready(node: Any) -> bool:
    for c in (node.status.conditions or []) if node.status else []:
        if c.type == "Ready":
            return bool(c.status == "True")
    return False


def pod_requests(pod: Any, names: tuple[str, ...]) -> dict[str, Decimal]:
    """What a pod holds: requests (extended resources: limits) of its containers."""
    out: dict[str, Decimal] = defaultdict(Decimal)
    for c in pod.spec.containers or []:
        res = c.resources
        req = (res.requests or {}) if res else {}
        lim = (res.limits or {}) if res else {}
        for n in names:
            v = req.get(n, lim.get(n))
            if v is not None:
                out[n] += _q(v)
    return out


def offers(nodes: list[Any], pods: list[Any], cfg: KubeConfig, region: str) -> list[ResourceOffer]:
    gpu = cfg.gpu_resource
    used: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for pod in pods:
        node_name = pod.spec.node_name if pod.spec else None
        if not node_name or (pod.status and pod.status.phase in ("Succeeded", "Failed")):
            continue
        for k, v in pod_requests(pod, (gpu, "cpu", "memory")).items():
            used[node_name][k] += v
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for node in nodes:
        alloc = (node.status.allocatable or {}) if node.status else {}
        gpus = int(_q(alloc.get(gpu)))
        if gpus <= 0 or (node.spec and node.spec.unschedulable) or not _node_ready(node):
            continue
        lab = node.metadata.labels or {}
        if any(lab.get(k) != v for k, v in cfg.node_selector.items()):
            continue
        u = used[node.metadata.name]
        cpu, mem = _q(alloc.get("cpu")), _q(alloc.get("memory"))
        groups[lab.get(cfg.gpu_product_label, "unknown")].append(
            {
                "gpus": gpus,
                "free": max(0, gpus - int(u[gpu])),
                "cpu": cpu,
                "cpu_free": max(Decimal(0), cpu - u["cpu"]),
                "mem_mb": int(mem / (1024 * 1024)),
                "mem_free_mb": int(max(Decimal(0), mem - u["memory"]) / (1024 * 1024)),
                "gpu_mem_mb": int(lab.get("nvidia.com/gpu.memory", "0") or 0)
                if str(lab.get("nvidia.com/gpu.memory", "0")).isdigit()
                else 0,
            }
        )
    out = []
    for product, ns in sorted(groups.items()):
        out.append(
            ResourceOffer(
                provider="kubernetes",
                region=region,
                gpu_type=product,
                gpu_count=max(n["free"] for n in ns),  # the most one replica can get
                gpu_memory_mb=max(n["gpu_mem_mb"] for n in ns),
                vcpu=int(max(n["cpu"] for n in ns)),
                ram_mb=max(n["mem_mb"] for n in ns),
                available=sum(1 for n in ns if n["free"] > 0),
                extra={
                    "nodes": len(ns),
                    "allocatable_gpus": sum(n["gpus"] for n in ns),
                    "free_gpus": sum(n["free"] for n in ns),
                    "cpu_allocatable": float(sum(n["cpu"] for n in ns)),
                    "cpu_free": float(sum(n["cpu_free"] for n in ns)),
                    "memory_allocatable_mb": sum(n["mem_mb"] for n in ns),
                    "memory_free_mb": sum(n["mem_free_mb"] for n in ns),
                    "namespace": cfg.namespace,
                },
            )
        )
    return out
