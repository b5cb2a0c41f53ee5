"""Pure builders of the objects one node is made of: a Secret, a Service and a Deployment.

Everything here is a plain dict (the client accepts dicts as bodies), so the shapes are tested
without a cluster. Names come from the node id, so a retried provision finds what the first made.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from adapters import engines as catalog
from adapters.base import WorkloadSpec
from adapters.engines import EngineInfo
from adapters.kubernetes.config import KubeConfig

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "inferia"
POOL = "inferia.pool"
NODE = "inferia.node"
DEPLOYMENT = "inferia.deployment"
ENDPOINT_ANN = "inferia.endpoint"
MODEL_ANN = "inferia.model"
SERVED_ANN = "inferia.served-model"
GPU_TYPE_ANN = "inferia.gpu-type"
GPU_COUNT_ANN = "inferia.gpu-count"
KEY_FIELD = "inference-key"
CONTAINER = "engine"


_BAD = re.compile(r"[^a-z0-9-]+")


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{text[: limit - 9].rstrip('-')}-{digest}"


def object_name(node_id: str) -> str:
    """A DNS-1035 label (Service names need one) derived from the node id, stable across retries."""
    name = _BAD.sub("-", node_id.lower()).strip("-") or "node"
    if not name[0].isalpha():
        name = f"n-{name}"
    return _clip(name, 55)  # room for the Secret's "-key" suffix


def secret_name(node_id: str) -> str:
    return f"{object_name(node_id)}-key"


def label_value(value: str) -> str:
    v = re.sub(r"[^A-Za-z0-9_.-]+", "-", value).strip("-_.")
    return _clip(v, 63).strip("-_.")


def labels(pool_id: str, node_id: str, deployment_id: str | None) -> dict[str, str]:
    out = {MANAGED_BY: MANAGER, POOL: label_value(pool_id), NODE: label_value(node_id)}
    if deployment_id:
        out[DEPLOYMENT] = label_value(deployment_id)
    return out


def pool_selector(pool_id: str) -> str:
    return f"{MANAGED_BY}={MANAGER},{POOL}={label_value(pool_id)}"


def node_selector_string(node_id: str) -> str:
    return f"{MANAGED_BY}={MANAGER},{NODE}={label_value(node_id)}"


def engine_of(w: WorkloadSpec) -> EngineInfo:
    info = catalog.engine(w.engine, "kubernetes")
    catalog.image_of(w, "kubernetes")  # a custom engine needs the model's image
    return info


def port_of(w: WorkloadSpec) -> int:
    return catalog.container_port(w)


def served_model(w: WorkloadSpec) -> str:
    return catalog.served_model(w)


def container_command(w: WorkloadSpec, port: int) -> tuple[list[str] | None, list[str]]:
    """(command or None for the image's entrypoint, args)."""
    if w.engine == "ollama":
        script = (
            "ollama serve & pid=$!; until ollama list >/dev/null 2>&1; do sleep 1; done; "
            '[ -z "$INFERIA_MODEL" ] || ollama pull "$INFERIA_MODEL" || exit 1; wait $pid'
        )
        return ["/bin/sh", "-c", script], []
    # llama.cpp's and vLLM's images take the server's arguments; custom: the image's entrypoint + the args
    return None, catalog.server_args(w, "0.0.0.0", port)


def build_secret(node_id: str, pool_id: str, w: WorkloadSpec | None, namespace: str) -> dict[str, Any]:
    key = (w.inference_key if w else None) or ""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name(node_id),
            "namespace": namespace,
            "labels": labels(pool_id, node_id, w.deployment_id if w else None),
        },
        "type": "Opaque",
        "stringData": {KEY_FIELD: key},
    }


def build_service(node_id: str, pool_id: str, w: WorkloadSpec | None, cfg: KubeConfig, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": object_name(node_id),
            "namespace": cfg.namespace,
            "labels": labels(pool_id, node_id, w.deployment_id if w else None),
        },
        "spec": {
            "type": cfg.service_type,
            "selector": {MANAGED_BY: MANAGER, NODE: label_value(node_id)},
            "ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


def _probe(path: str, port: int, initial: int, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "initialDelaySeconds": initial,
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _key_env(name: str, node_id: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret_name(node_id), "key": KEY_FIELD}}}


def build_deployment(
    node_id: str,
    pool_id: str,
    w: WorkloadSpec,
    cfg: KubeConfig,
    annotations: dict[str, str],
    gpu_product: str | None = None,
) -> dict[str, Any]:
    eng = engine_of(w)
    port = port_of(w)
    health = catalog.health_path(w)
    command, args = container_command(w, port)
    env: list[dict[str, Any]] = [{"name": k, "value": str(v)} for k, v in sorted(w.env.items())]
    env += [_key_env(name, node_id) for name in catalog.key_env_names(w)]
    if w.engine == "ollama":
        env += [{"name": k, "value": v} for k, v in catalog.ollama_env("0.0.0.0", port).items()]
        env.append({"name": "INFERIA_MODEL", "value": w.source or ""})
    resources: dict[str, Any] = {}
    if w.gpus > 0:
        resources["limits"] = {cfg.gpu_resource: str(w.gpus)}
    requests = {k: v for k, v in (("cpu", cfg.cpu), ("memory", cfg.memory)) if v}
    if requests:
        resources["requests"] = requests
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": catalog.image_of(w, "kubernetes"),
        "args": args,
        "env": env,
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "resources": resources,
        "readinessProbe": _probe(health, port, 5, 5, 3),
        "livenessProbe": _probe(health, port, cfg.liveness_initial_delay_s, 15, 4),
    }
    if command:
        container["command"] = command
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if cfg.model_cache_pvc:
        volumes.append({"name": "model-cache", "persistentVolumeClaim": {"claimName": cfg.model_cache_pvc}})
        mounts.append({"name": "model-cache", "mountPath": cfg.model_cache_mount or eng.cache_dir})
    container["volumeMounts"] = mounts
    selector = dict(cfg.node_selector)
    product = gpu_product or cfg.gpu_product
    if product:
        selector[cfg.gpu_product_label] = product
    tolerations = list(cfg.tolerations)
    if w.gpus > 0 and not any(t.get("key") == cfg.gpu_resource for t in tolerations):
        tolerations.append({"key": cfg.gpu_resource, "operator": "Exists", "effect": "NoSchedule"})
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "automountServiceAccountToken": False,  # the engine never talks to the API
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
    }
    if selector:
        pod_spec["nodeSelector"] = selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if cfg.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in cfg.image_pull_secrets]
    lab = labels(pool_id, node_id, w.deployment_id)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": object_name(node_id),
            "namespace": cfg.namespace,
            "labels": lab,
            "annotations": annotations,
        },
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 1,
            "strategy": {"type": "Recreate"},  # never two pods holding the node's GPUs
            "selector": {"matchLabels": {MANAGED_BY: MANAGER, NODE: label_value(node_id)}},
            "template": {"metadata": {"labels": lab}, "spec": pod_spec},
        },
    }
