"""The whole control plane on a real kube-apiserver: pool -> deployment -> Deployments/Services ->
ready -> routing table; readiness lost -> replaced; no GPUs -> reason; pool restart -> adoption;
orphans cleaned; delete removes everything; and the deploy-to-ready figures."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
import ray
from kubernetes import client as k8s

from actors.runtime import NAMESPACE, pool_actor_name
from adapters.base import ProvisionRequest, WorkloadSpec
from adapters.kubernetes.adapter import KubernetesAdapter
from adapters.registry import register
from controller.boot import ControlPlane
from controller.client import Client
from tests.support.controlplane import wait_for
from tests.support.fake_kubelet import UNREADY, FakeKubelet
from tests.support.k8s_cluster import K8sCluster

pytestmark = pytest.mark.integration
register(KubernetesAdapter)  # this process; Ray workers find it through the registry's built-ins
SEL = "app.kubernetes.io/managed-by=inferia"


def _objects(cluster: K8sCluster, ns: str, pool_id: str) -> dict[str, list[Any]]:
    api = cluster.api_client()
    apps, core = k8s.AppsV1Api(api), k8s.CoreV1Api(api)
    sel = f"{SEL},inferia.pool={pool_id}"
    return {
        "deployments": apps.list_namespaced_deployment(ns, label_selector=sel).items,
        "services": core.list_namespaced_service(ns, label_selector=sel).items,
        "secrets": core.list_namespaced_secret(ns, label_selector=sel).items,
        "pods": core.list_namespaced_pod(ns, label_selector=sel).items,
    }


def _pool(api: Client, cluster: K8sCluster, ns: str, **extra: Any) -> dict[str, Any]:
    cfg = {"kubeconfig": str(cluster.kubeconfig), "namespace": ns, **extra}
    return api.create_pool(f"k8s-{uuid.uuid4().hex[:6]}", provider="kubernetes", max_nodes=30, provider_config=cfg)


def _routes(api: Client, model: str) -> list[dict[str, Any]]:
    return list((api.routing_table() or {}).get("models", {}).get(model, []))


def test_k8s_pool_deploy_replace_adopt_orphans_delete(
    control_plane: ControlPlane, api: Client, k8s_cluster: K8sCluster, fake_kubelet: FakeKubelet
) -> None:
    ns = f"flow-{uuid.uuid4().hex[:6]}"
    pool = _pool(api, k8s_cluster, ns, unschedulable_timeout_s=3)
    model = f"qwen-{uuid.uuid4().hex[:6]}"
    api.register_model(model, engine="vllm", source="Qwen/Qwen2.5-0.5B-Instruct", gpus=1)
    dep = api.deploy(model, pool["name"], replicas=2)
    api.wait_deployment(dep["id"], timeout=60)

    objs = _objects(k8s_cluster, ns, pool["id"])
    assert len(objs["deployments"]) == 2 and len(objs["services"]) == 2 and len(objs["secrets"]) == 2
    for d in objs["deployments"]:
        c = d.spec.template.spec.containers[0]
        assert d.metadata.labels["inferia.deployment"] == dep["id"]
        assert c.resources.limits == {"nvidia.com/gpu": "1"}
        assert c.readiness_probe.http_get.path == "/health"
        assert all(e.value is None or "ik_" not in e.value for e in c.env)
        assert {e.name for e in c.env if e.value_from} == {"INFERIA_INFERENCE_KEY", "VLLM_API_KEY"}
    routes = wait_for(lambda: len(r := _routes(api, model)) == 2 and r, 15, what="2 routes")
    want = {f"http://{s.metadata.name}.{ns}.svc.cluster.local:8000" for s in objs["services"]}
    assert {r["endpoint"] for r in routes} == want

    # a pod loses readiness -> its node goes unhealthy -> replaced by a new node
    victim = routes[0]["node_id"]
    fake_kubelet.set_mode(UNREADY, node_id=victim)
    wait_for(lambda: victim not in {r["node_id"] for r in _routes(api, model)}, 10, what="victim unrouted")
    wait_for(
        lambda: len(r := _routes(api, model)) == 2 and victim not in {x["node_id"] for x in r},
        60,
        what="replacement routed",
    )
    wait_for(lambda: api.get_node(victim)["state"] == "terminated", 30, what="victim terminated")
    wait_for(
        lambda: (
            victim
            not in {d.metadata.labels["inferia.node"] for d in _objects(k8s_cluster, ns, pool["id"])["deployments"]}
        ),
        30,
        what="victim's Deployment deleted",
    )

    # the pool actor restarts: it adopts what runs, creates nothing twice
    before = sorted(r["node_id"] for r in _routes(api, model))
    # the actor that runs the pool: its own, or a pool host (INFERIA_POOL_HOSTS=auto, beyond the first pools)
    actor = pool_actor_name(pool["id"], control_plane.settings.pool_hosts)
    ray.kill(ray.get_actor(actor, namespace=NAMESPACE), no_restart=False)
    wait_for(lambda: api.get_pool(pool["id"]).get("state") == "active", 30, what="pool back")
    time.sleep(3)
    after = _objects(k8s_cluster, ns, pool["id"])
    assert len(after["deployments"]) == 2
    assert sorted(d.metadata.labels["inferia.node"] for d in after["deployments"]) == before
    assert sorted(r["node_id"] for r in _routes(api, model)) == before

    # an orphan (ours by label, unknown to the database) is cleaned by the pool's reconcile
    orphan = KubernetesAdapter(pool["id"], {"kubeconfig": str(k8s_cluster.kubeconfig), "namespace": ns})
    w = WorkloadSpec(deployment_id=dep["id"], model_name=model, engine="vllm", source="x", gpus=1, inference_key="k")
    asyncio.run(orphan.provision_node(ProvisionRequest("node-orphan1", pool["id"], "", "", 1.0, workload=w)))
    wait_for(
        lambda: (
            "node-orphan1"
            not in {d.metadata.labels["inferia.node"] for d in _objects(k8s_cluster, ns, pool["id"])["deployments"]}
        ),
        30,
        what="orphan removed",
    )

    # not enough GPUs: the reason reaches the API
    big = f"big-{uuid.uuid4().hex[:6]}"
    api.register_model(big, engine="vllm", source="meta-llama/Llama-3.1-405B", gpus=9)
    bdep = api.deploy(big, pool["name"], replicas=1)

    def reason() -> str | None:
        d = api.get_deployment(bdep["id"])
        texts = [r.get("reason") or "" for r in d["replicas"]] + [d.get("error") or ""]
        return next((t for t in texts if "no GPU capacity in namespace" in t), None)

    shown = wait_for(reason, 40, what="pending reason shown")
    assert f"no GPU capacity in namespace {ns} for pool {pool['id']}" in shown
    api.delete_deployment(bdep["id"])

    # delete -> everything we made is gone
    api.delete_deployment(dep["id"])
    wait_for(lambda: not any(_objects(k8s_cluster, ns, pool["id"]).values()), 60, what="all objects deleted")


def test_k8s_deploy_to_ready_figures(
    control_plane: ControlPlane, api: Client, k8s_cluster: K8sCluster, fake_kubelet: FakeKubelet
) -> None:
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    pool = _pool(api, k8s_cluster, ns)
    model = f"bench-{uuid.uuid4().hex[:6]}"
    api.register_model(model, engine="vllm", source="Qwen/Qwen2.5-0.5B-Instruct", gpus=1)
    figures = {}
    for n in (1, 20):
        t0 = time.monotonic()
        dep = api.deploy(model, pool["name"], replicas=n)
        api.wait_deployment(dep["id"], timeout=120, poll=0.2)
        figures[n] = time.monotonic() - t0
        api.delete_deployment(dep["id"])
        wait_for(lambda: not any(_objects(k8s_cluster, ns, pool["id"]).values()), 90, what="cleaned up")
    print(f"FIGURES k8s deploy-to-ready: 1 replica {figures[1]:.2f}s, 20 replicas {figures[20]:.2f}s")
