"""A fake kubelet: GPU nodes that stay Ready, and pods bound to them that turn Running/Ready.

It only writes through the API (node objects and the pods' status subresource), so everything
else (scheduler, ReplicaSets, endpoints, garbage collection) is the real control plane's work.
Pod IPs are inert RFC 5737 addresses (192.0.2.x); nothing ever connects to them.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from tests.support.k8s_cluster import K8sCluster

READY, PENDING, CRASHLOOP, UNREADY = "ready", "pending", "crashloop", "unready"


@dataclass(frozen=True)
class GpuNode:
    name: str
    product: str
    gpus: int
    cpu: str = "64"
    memory: str = "512Gi"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeKubelet:
    def __init__(self, api_client: Any, nodes: list[GpuNode], gpu_resource: str = "nvidia.com/gpu") -> None:
        self.core = k8s.CoreV1Api(api_client)
        self.nodes = {n.name: n for n in nodes}
        self.gpu_resource = gpu_resource
        self.modes: dict[tuple[str, str], str] = {}  # (label or "namespace", value) -> mode
        self._applied: dict[str, str] = {}  # pod uid -> mode applied
        self._ips = itertools.cycle(range(1, 200))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []

    # ------------------------------------------------------------ control
    def set_mode(self, mode: str, *, namespace: str | None = None, node_id: str | None = None) -> None:
        """READY (default), PENDING (leave pods alone), CRASHLOOP, UNREADY; by namespace or inferia.node."""
        if namespace:
            self.modes[("namespace", namespace)] = mode
        if node_id:
            self.modes[("inferia.node", node_id)] = mode

    def _mode(self, pod: Any) -> str:
        lab = pod.metadata.labels or {}
        node = lab.get("inferia.node")
        if node and ("inferia.node", node) in self.modes:
            return self.modes[("inferia.node", node)]
        return self.modes.get(("namespace", pod.metadata.namespace), READY)

    # ------------------------------------------------------------ nodes
    def _node_status(self, n: GpuNode, i: int) -> dict[str, Any]:
        cap = {"cpu": n.cpu, "memory": n.memory, "pods": "110", self.gpu_resource: str(n.gpus)}
        return {
            "capacity": cap,
            "allocatable": cap,
            "addresses": [
                {"type": "InternalIP", "address": f"192.0.2.{200 + i}"},
                {"type": "Hostname", "address": n.name},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "fake kubelet is posting ready status",
                    "lastHeartbeatTime": _now(),
                    "lastTransitionTime": _now(),
                }
            ],
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": "",
                "osImage": "fake",
                "containerRuntimeVersion": "fake://1",
                "kubeletVersion": "v1.20.2",
                "kubeProxyVersion": "v1.20.2",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def register(self) -> None:
        for i, n in enumerate(self.nodes.values()):
            body = {
                "metadata": {
                    "name": n.name,
                    "labels": {
                        "kubernetes.io/hostname": n.name,
                        "kubernetes.io/os": "linux",
                        "nvidia.com/gpu.product": n.product,
                        "nvidia.com/gpu.count": str(n.gpus),
                    },
                },
                "spec": {},
                "status": self._node_status(n, i),
            }
            try:
                self.core.create_node(body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
            self.core.patch_node_status(n.name, {"status": self._node_status(n, i)})
            # the apiserver's TaintNodesByCondition admission adds node.kubernetes.io/not-ready; lift it
            node = self.core.read_node(n.name)
            if node.spec.taints:
                node.spec.taints = [t for t in node.spec.taints if not t.key.startswith("node.kubernetes.io/")]
                self.core.replace_node(n.name, node)

    def _heartbeat_nodes(self) -> None:
        while not self._stop.wait(10.0):
            for i, n in enumerate(self.nodes.values()):
                try:
                    self.core.patch_node_status(n.name, {"status": self._node_status(n, i)})
                except Exception as exc:
                    self.errors.append(f"node {n.name}: {exc}")

    # ------------------------------------------------------------ pods
    def _pod_status(self, pod: Any, mode: str) -> dict[str, Any]:
        now = _now()
        i = list(self.nodes).index(pod.spec.node_name)
        ip = f"192.0.2.{next(self._ips)}"
        ready = mode == READY
        names = [c.name for c in pod.spec.containers]
        if mode == CRASHLOOP:
            state: dict[str, Any] = {
                "waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}
            }
        else:
            state = {"running": {"startedAt": now}}
        statuses = [
            {
                "name": c.name,
                "image": c.image,
                "imageID": "",
                "ready": ready,
                "started": mode != CRASHLOOP,
                "restartCount": 3 if mode == CRASHLOOP else 0,
                "state": state,
            }
            for c in pod.spec.containers
        ]
        status = "True" if ready else "False"
        why = {} if ready else {"reason": "ContainersNotReady", "message": f"containers with unready status: {names}"}
        return {
            "status": {
                "phase": "Running",
                "hostIP": f"192.0.2.{200 + i}",
                "podIP": (pod.status.pod_ip if pod.status and pod.status.pod_ip else ip),
                "startTime": now,
                "conditions": [
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "Ready", "status": status, "lastTransitionTime": now, **why},
                    {"type": "ContainersReady", "status": status, "lastTransitionTime": now, **why},
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                ],
                "containerStatuses": statuses,
            }
        }

    def step(self) -> None:
        pods = self.core.list_pod_for_all_namespaces(field_selector="spec.nodeName!=")
        seen = set()
        for pod in pods.items:
            if pod.spec.node_name not in self.nodes:
                continue
            uid = pod.metadata.uid
            seen.add(uid)
            try:
                if pod.metadata.deletion_timestamp is not None:  # the kubelet finishes deletions
                    self.core.delete_namespaced_pod(
                        pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0, _preload_content=False
                    )
                    continue
                mode = self._mode(pod)
                if mode == PENDING or self._applied.get(uid) == mode:
                    continue
                self.core.patch_namespaced_pod_status(
                    pod.metadata.name, pod.metadata.namespace, self._pod_status(pod, mode)
                )
                self._applied[uid] = mode
            except ApiException as exc:
                if exc.status not in (404, 409):
                    self.errors.append(f"pod {pod.metadata.name}: {exc.status} {exc.reason}")
        for uid in [u for u in self._applied if u not in seen]:
            self._applied.pop(uid, None)

    def _run_pods(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:
                self.errors.append(f"step: {exc}")
            self._stop.wait(0.2)

    def start(self) -> None:
        self.register()
        for target in (self._heartbeat_nodes, self._run_pods):
            t = threading.Thread(target=target, name=f"fake-kubelet:{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)


DEFAULT_NODES = [GpuNode(f"gpu-a100-{i}", "NVIDIA-A100-SXM4-80GB", 8) for i in range(3)] + [
    GpuNode("gpu-l4-0", "NVIDIA-L4", 4)
]


@pytest.fixture(scope="session")
def fake_kubelet(k8s_cluster: K8sCluster) -> Iterator[FakeKubelet]:
    kubelet = FakeKubelet(k8s_cluster.api_client(), DEFAULT_NODES)
    kubelet.start()
    try:
        yield kubelet
    finally:
        kubelet.stop()
