"""A rolling update on a real kube-apiserver (issue 12): a deployment of 2 vLLM replicas on a Kubernetes pool is
updated from arguments A to B. Pods do not run (../shared/k8s has no kubelet): the fake kubelet of
tests/support/fake_kubelet.py marks every scheduled pod Running and Ready, which the adapter reads as the engine
being ready. Sampled every 0.1 s through the whole update: the routing table never has fewer than
N - max_unavailable = 2 endpoints for the model, never more than N + max_surge = 3 replicas are alive; at the end
every replica is of the new generation and every Deployment object of the pool runs the new arguments."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from kubernetes import client as k8s

from adapters.kubernetes.adapter import KubernetesAdapter
from adapters.registry import register
from controller.boot import ControlPlane
from controller.client import Client
from tests.support import controlplane as cpl
from tests.support.fake_kubelet import FakeKubelet
from tests.support.k8s_cluster import K8sCluster

pytestmark = pytest.mark.integration
register(KubernetesAdapter)
SEL = "app.kubernetes.io/managed-by=inferia"
ALIVE = ("provisioning", "ready", "unhealthy", "draining")


class Sampler:
    """The model's routed endpoints and the deployment's alive replicas, every 0.1 s."""

    def __init__(self, cp: ControlPlane, dep_id: str, model: str) -> None:
        self.api, self.dep_id, self.model = cpl.client(cp), dep_id, model
        self.min_routed, self.peak_alive, self.samples = 10**9, 0, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            routes = (self.api.routing_table() or {}).get("models", {}).get(self.model, [])
            reps = self.api.get_deployment(self.dep_id)["replicas"]
            self.min_routed = min(self.min_routed, len(routes))
            self.peak_alive = max(self.peak_alive, sum(1 for r in reps if r["state"] in ALIVE))
            self.samples += 1
            time.sleep(0.1)

    def __enter__(self) -> Sampler:
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join(10)
        self.api.close()


def _deployments(cluster: K8sCluster, ns: str, pool_id: str) -> list[Any]:
    apps = k8s.AppsV1Api(cluster.api_client())
    return list(apps.list_namespaced_deployment(ns, label_selector=f"{SEL},inferia.pool={pool_id}").items)


def test_k8s_update_keeps_the_routing_table_and_ends_on_the_new_generation(
    control_plane: ControlPlane, api: Client, k8s_cluster: K8sCluster, fake_kubelet: FakeKubelet
) -> None:
    ns = f"roll-{uuid.uuid4().hex[:6]}"
    cfg = {"kubeconfig": str(k8s_cluster.kubeconfig), "namespace": ns}
    pool = api.create_pool(f"k8s-{uuid.uuid4().hex[:6]}", provider="kubernetes", max_nodes=6, provider_config=cfg)
    model = f"qwen-{uuid.uuid4().hex[:6]}"
    api.register_model(
        model, engine="vllm", source="Qwen/Qwen2.5-0.5B-Instruct", gpus=1, args=["--max-model-len", "2048"]
    )
    dep = api.deploy(model, pool["name"], replicas=2)
    api.wait_deployment(dep["id"], timeout=60)
    cpl.wait_for(lambda: len((api.routing_table() or {}).get("models", {}).get(model, [])) == 2, 15, what="2 routes")
    old_nodes = {r["id"] for r in api.get_deployment(dep["id"])["replicas"] if r["state"] == "ready"}
    assert len(old_nodes) == 2

    with Sampler(control_plane, dep["id"], model) as s:
        time.sleep(0.5)
        t0 = time.monotonic()
        upd = api.update_deployment(dep["id"], args=["--max-model-len", "4096"], max_surge=1, max_unavailable=0)
        assert upd["state"] == "updating" and upd["generation"] == 2
        done = api.wait_update(dep["id"], 2, timeout=120, poll=0.2)
        took = time.monotonic() - t0
        cpl.wait_for(lambda: len(_deployments(k8s_cluster, ns, pool["id"])) == 2, 30, what="old Deployments gone")
        time.sleep(0.5)
    assert s.samples > 10
    assert s.min_routed >= 2, s.min_routed  # N - max_unavailable
    assert s.peak_alive <= 3, s.peak_alive  # N + max_surge
    assert done["state"] == "running" and done["current_generation"] == 2
    ready = [r for r in done["replicas"] if r["state"] == "ready"]
    assert len(ready) == 2 and all(r["generation"] == 2 for r in ready) and not {r["id"] for r in ready} & old_nodes
    objs = _deployments(k8s_cluster, ns, pool["id"])
    assert {d.metadata.labels["inferia.node"] for d in objs} == {r["id"] for r in ready}
    for d in objs:
        args = d.spec.template.spec.containers[0].args
        assert args[-2:] == ["--max-model-len", "4096"], args
    routes = (api.routing_table() or {}).get("models", {}).get(model, [])
    assert {r["node_id"] for r in routes} == {r["id"] for r in ready}
    print(f"\nFIGURES k8s_rollout_2_replicas_s={took:.1f} min_routed={s.min_routed} peak_alive={s.peak_alive}")
    api.delete_deployment(dep["id"])
    cpl.wait_for(lambda: not _deployments(k8s_cluster, ns, pool["id"]), 60, what="all Deployments deleted")
