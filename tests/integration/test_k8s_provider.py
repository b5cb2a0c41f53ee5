"""The Kubernetes adapter against a real kube-apiserver + scheduler + controllers and a fake kubelet."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from adapters.base import (
    NodeHealth,
    NodeRef,
    PermanentProviderError,
    ProviderNodeStatus,
    ProvisionRequest,
    TemporaryProviderError,
    WorkloadSpec,
)
from adapters.kubernetes.adapter import KubernetesAdapter
from adapters.registry import register
from tests.support.fake_kubelet import CRASHLOOP, UNREADY, FakeKubelet
from tests.support.k8s_cluster import K8sCluster, kubeconfig_text
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration
register(KubernetesAdapter)
RBAC = Path(__file__).resolve().parents[2] / "docs" / "deploy" / "kubernetes-rbac.yaml"


def _ns() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def _req(node_id: str, pool_id: str, gpus: int = 1, key: str = "ik_secret_value") -> ProvisionRequest:
    w = WorkloadSpec(
        deployment_id="dep-1",
        model_name="qwen",
        engine="vllm",
        source="Qwen/Qwen2.5-0.5B-Instruct",
        args=("--max-model-len", "4096"),
        gpus=gpus,
        inference_key=key,
    )
    return ProvisionRequest(node_id, pool_id, "http://hb", "nt_x", 1.0, workload=w)


async def _until(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await cond()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


async def test_provision_is_idempotent_and_shaped_right(k8s_cluster: K8sCluster, fake_kubelet: FakeKubelet) -> None:
    ns, pool = _ns(), f"pool-{uuid.uuid4().hex[:6]}"
    a = KubernetesAdapter(pool, {"kubeconfig": str(k8s_cluster.kubeconfig), "namespace": ns})
    try:
        first = await a.provision_node(_req("node-aaa", pool, gpus=2))
        again = await a.provision_node(_req("node-aaa", pool, gpus=2))  # a retry finds the first try's objects
        assert first == again
        assert first.endpoint == f"http://node-aaa.{ns}.svc.cluster.local:8000"
        apps = k8s.AppsV1Api(k8s_cluster.api_client())
        core = k8s.CoreV1Api(k8s_cluster.api_client())
        deps = apps.list_namespaced_deployment(ns).items
        assert len(deps) == 1 and deps[0].spec.replicas == 1
        d = deps[0]
        labels = d.metadata.labels
        assert labels["app.kubernetes.io/managed-by"] == "inferia"
        assert (labels["inferia.pool"], labels["inferia.node"], labels["inferia.deployment"]) == (
            pool,
            "node-aaa",
            "dep-1",
        )
        c = d.spec.template.spec.containers[0]
        assert c.image == "vllm/vllm-openai:latest"
        assert c.resources.limits == {"nvidia.com/gpu": "2"}
        assert c.readiness_probe.http_get.path == "/health" and c.liveness_probe.http_get.path == "/health"
        assert "--tensor-parallel-size" in c.args and "Qwen/Qwen2.5-0.5B-Instruct" in c.args
        keyed = {e.name: e.value_from.secret_key_ref.name for e in c.env if e.value_from}
        assert keyed == {"INFERIA_INFERENCE_KEY": "node-aaa-key", "VLLM_API_KEY": "node-aaa-key"}
        assert "ik_secret_value" not in json.dumps(k8s_cluster.api_client().sanitize_for_serialization(d))
        sec = core.read_namespaced_secret("node-aaa-key", ns)
        assert base64.b64decode(sec.data["inference-key"]).decode() == "ik_secret_value"
        svc = core.read_namespaced_service("node-aaa", ns)
        assert svc.spec.type == "ClusterIP" and svc.spec.ports[0].port == 8000
        assert svc.spec.selector["inferia.node"] == "node-aaa"

        st = await _until(lambda: _status_is(a, "node-aaa", ProviderNodeStatus.RUNNING), 30, "pod running")
        assert st
        listed = await a.list_nodes(pool)
        assert [(n.node_id, n.endpoint) for n in listed] == [("node-aaa", first.endpoint)]
        offers = {o.gpu_type: o for o in await a.discover_resources()}
        assert offers["NVIDIA-A100-SXM4-80GB"].extra["allocatable_gpus"] == 24
        assert offers["NVIDIA-L4"].extra["allocatable_gpus"] == 4
        free = sum(o.extra["free_gpus"] for o in offers.values())
        assert free <= 28 - 2  # our pod's 2 GPUs are taken (other tests' pods may hold more)
        logs = await a.get_logs(NodeRef("node-aaa", pool))
        assert logs and "running" in logs[0]

        await a.deprovision_node(NodeRef("node-aaa", pool))
        await a.deprovision_node(NodeRef("node-aaa", pool))  # already gone is success
        await _until(lambda: _gone(a, pool), 30, "objects deleted")
        assert (await a.get_node_status(NodeRef("node-aaa", pool))).status == ProviderNodeStatus.TERMINATED
    finally:
        await a.close()


async def _status_is(a: KubernetesAdapter, node_id: str, want: ProviderNodeStatus) -> bool:
    return (await a.get_node_status(NodeRef(node_id, a.pool_id))).status == want


async def _gone(a: KubernetesAdapter, pool: str) -> bool:
    c = await a.kube()
    sel = f"inferia.pool={pool}"
    objs = [
        await c.call("d", c.apps.list_namespaced_deployment, a.ns, label_selector=sel),
        await c.call("s", c.core.list_namespaced_service, a.ns, label_selector=sel),
        await c.call("x", c.core.list_namespaced_secret, a.ns, label_selector=sel),
        await c.call("p", c.core.list_namespaced_pod, a.ns, label_selector=sel),
    ]
    return all(not o.items for o in objs)


async def test_watch_health_ready_unready_pending_crashloop(k8s_cluster: K8sCluster, fake_kubelet: FakeKubelet) -> None:
    ns, pool = _ns(), f"pool-{uuid.uuid4().hex[:6]}"
    cfg = {
        "kubeconfig": str(k8s_cluster.kubeconfig),
        "namespace": ns,
        "unschedulable_timeout_s": 2,
        "unready_timeout_s": 2,
    }
    a = KubernetesAdapter(pool, cfg)
    seen: dict[str, list[NodeHealth]] = {}

    async def report(items: list[NodeHealth]) -> None:
        for h in items:
            seen.setdefault(h.node_id, []).append(h)

    async def last(node_id: str, state: str) -> NodeHealth | None:
        hs = seen.get(node_id) or []
        return hs[-1] if hs and hs[-1].state == state else None

    task = asyncio.create_task(a.watch_health(report))
    try:
        fake_kubelet.set_mode(CRASHLOOP, node_id="node-crash")
        await a.provision_node(_req("node-ok", pool))
        await a.provision_node(_req("node-big", pool, gpus=9))  # more than any node has
        await a.provision_node(_req("node-crash", pool))
        ok = await _until(lambda: last("node-ok", "ready"), 30, "ready report")
        assert ok.endpoint == f"http://node-ok.{ns}.svc.cluster.local:8000"

        starting = await _until(lambda: last("node-big", "starting"), 30, "pending report")
        assert starting.reason and starting.reason.startswith(f"no GPU capacity in namespace {ns} for pool {pool}")
        st = await a.get_node_status(NodeRef("node-big", pool))
        assert st.status == ProviderNodeStatus.PENDING and "Insufficient nvidia.com/gpu" in (st.reason or "")
        failed = await _until(lambda: last("node-big", "failed"), 10, "unschedulable timeout")
        assert "no GPU capacity" in (failed.reason or "")

        crash = await _until(lambda: last("node-crash", "failed"), 30, "crash loop report")
        assert (crash.reason or "").startswith("CrashLoopBackOff")
        st = await a.get_node_status(NodeRef("node-crash", pool))
        assert st.status == ProviderNodeStatus.FAILED and "CrashLoopBackOff" in (st.reason or "")

        fake_kubelet.set_mode(UNREADY, node_id="node-ok")
        blip = await _until(lambda: last("node-ok", "starting"), 30, "readiness blip")
        assert "not ready (for now)" in (blip.reason or "")  # out of the table, not failed yet
        lost = await _until(lambda: last("node-ok", "failed"), 30, "readiness lost for unready_timeout_s")
        assert "no longer ready" in (lost.reason or "")
        assert not task.done()
    finally:
        task.cancel()
        for n in ("node-ok", "node-big", "node-crash"):
            await a.deprovision_node(NodeRef(n, pool))
        await a.close()


async def test_rbac_service_account_runs_the_full_cycle(
    k8s_cluster: K8sCluster, fake_kubelet: FakeKubelet, tmp_path: Path
) -> None:
    """The shipped Role/ClusterRole suffice: the provider runs with the ServiceAccount's own token."""
    ns, pool = _ns(), f"pool-{uuid.uuid4().hex[:6]}"
    admin = k8s_cluster.api_client()
    core = k8s.CoreV1Api(admin)
    core.create_namespace({"metadata": {"name": ns}})
    rbac = k8s.RbacAuthorizationV1Api(admin)
    for doc in yaml.safe_load_all(RBAC.read_text()):
        doc["metadata"]["name"] = doc["metadata"]["name"] + (
            "" if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding") else f"-{ns}"
        )
        if "namespace" in doc["metadata"]:
            doc["metadata"]["namespace"] = ns
        for s in doc.get("subjects", []):
            s["namespace"] = ns
        if doc["kind"] == "ClusterRoleBinding":
            doc["roleRef"]["name"] += f"-{ns}"
        create = {
            "ServiceAccount": lambda d: core.create_namespaced_service_account(ns, d),
            "Role": lambda d: rbac.create_namespaced_role(ns, d),
            "RoleBinding": lambda d: rbac.create_namespaced_role_binding(ns, d),
            "ClusterRole": rbac.create_cluster_role,
            "ClusterRoleBinding": rbac.create_cluster_role_binding,
        }[doc["kind"]]
        create(doc)

    def token() -> str | None:  # the token controller (controller-manager) makes the SA's token Secret
        for s in core.list_namespaced_secret(ns).items:
            sa = (s.metadata.annotations or {}).get("kubernetes.io/service-account.name")
            if s.type == "kubernetes.io/service-account-token" and sa == "inferia-provider" and s.data:
                return base64.b64decode(s.data["token"]).decode()
        return None

    deadline = time.monotonic() + 30
    tok = token()
    while tok is None and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        tok = token()
    assert tok, "no ServiceAccount token Secret"
    kc = k8s_cluster.write_kubeconfig(tmp_path / "sa.kubeconfig", tok, "inferia-provider")
    a = KubernetesAdapter(pool, {"kubeconfig": str(kc), "namespace": ns})
    health: list[NodeHealth] = []

    async def report(items: list[NodeHealth]) -> None:
        health.extend(items)

    task = asyncio.create_task(a.watch_health(report))
    try:
        await a.provision_node(_req("node-sa", pool))
        await _until(lambda: _status_is(a, "node-sa", ProviderNodeStatus.RUNNING), 30, "running as the SA")

        async def ready() -> bool:
            return any(h.node_id == "node-sa" and h.state == "ready" for h in health)

        await _until(ready, 15, "ready via the SA's watch")
        assert [n.node_id for n in await a.list_nodes(pool)] == ["node-sa"]
        assert await a.discover_resources()
        assert (await a.get_logs(NodeRef("node-sa", pool)))[0].startswith("[kubernetes]")
        await a.deprovision_node(NodeRef("node-sa", pool))
        await _until(lambda: _gone(a, pool), 30, "deleted as the SA")
        # and nothing more: another namespace is out of reach, with the API's message
        other = KubernetesAdapter(pool, {"kubeconfig": str(kc), "namespace": "default"})
        with pytest.raises(PermanentProviderError, match="403"):
            await other.list_nodes(pool)
        await other.close()
    finally:
        task.cancel()
        await a.close()


async def test_errors_are_translated(k8s_cluster: K8sCluster, tmp_path: Path) -> None:
    bad = k8s_cluster.write_kubeconfig(tmp_path / "bad.kubeconfig", "not-a-token", "nobody")
    a = KubernetesAdapter("p", {"kubeconfig": str(bad), "namespace": "default"})
    with pytest.raises(PermanentProviderError, match="401"):
        await a.list_nodes("p")
    assert (await a.get_node_status(NodeRef("n", "p"))).status == ProviderNodeStatus.UNKNOWN
    await a.close()
    closed = tmp_path / "closed.kubeconfig"
    closed.write_text(bad.read_text().replace(k8s_cluster.url, "https://127.0.0.1:9"))
    b = KubernetesAdapter("p", {"kubeconfig": str(closed), "namespace": "default"})
    with pytest.raises(TemporaryProviderError):
        await b.list_nodes("p")
    await b.close()
    # 422: the API's own validation message reaches the user
    ns = _ns()
    c = KubernetesAdapter("p", {"kubeconfig": str(k8s_cluster.kubeconfig), "namespace": ns, "cpu": "lots"})
    with pytest.raises((PermanentProviderError, ApiException)) as err:
        await c.provision_node(_req("node-422", "p"))
    assert "422" in str(err.value) or "400" in str(err.value)
    await c.deprovision_node(NodeRef("node-422", "p"))
    await c.close()


async def test_api_server_outage_keeps_the_last_known_health(
    k8s_cluster: K8sCluster, fake_kubelet: FakeKubelet, tmp_path: Path
) -> None:
    """Issue 10 item 7: the API server becomes unreachable (connections reset, new ones refused): the watch
    keeps reporting the ready pod as ready (marked stale) instead of failing, and resumes when it is back."""
    ns, pool = _ns(), f"pool-{uuid.uuid4().hex[:6]}"
    proxy = TcpProxy("127.0.0.1", k8s_cluster.port)
    kc = tmp_path / "proxied.kubeconfig"
    kc.write_text(kubeconfig_text(f"https://127.0.0.1:{proxy.port}", k8s_cluster.admin_token))
    a = KubernetesAdapter(pool, {"kubeconfig": str(kc), "namespace": ns, "request_timeout_s": 2})
    seen: list[NodeHealth] = []

    async def report(items: list[NodeHealth]) -> None:
        seen.extend(h for h in items if h.node_id == "node-out")

    task = asyncio.create_task(a.watch_health(report))
    try:
        await a.provision_node(_req("node-out", pool))
        await _until(lambda: _last_is(seen, "ready"), 30, "ready")
        proxy.cut()
        cut_at = len(seen)
        stale = await _until(lambda: _last_is(seen, "ready", "unreachable"), 30, "stale report")
        assert stale.state == "ready" and stale.endpoint
        await asyncio.sleep(3)  # the watch keeps retrying: nothing but stale-ready meanwhile
        assert all(h.state == "ready" for h in seen[cut_at:]) and not task.done()
        st = await a.get_node_status(NodeRef("node-out", pool))
        assert st.status == ProviderNodeStatus.UNKNOWN  # a transient error is never "gone"
        proxy.restore()
        fresh = await _until(lambda: _last_is(seen, "ready", None), 40, "fresh report after the outage")
        assert fresh.reason is None
    finally:
        task.cancel()
        proxy.restore()
        await a.deprovision_node(NodeRef("node-out", pool))
        await a.close()
        proxy.close()


async def _last_is(seen: list[NodeHealth], state: str, reason: str | None = "") -> NodeHealth | None:
    """The last report when it has `state` and (reason "": any; None: none; text: contains it)."""
    h = seen[-1] if seen else None
    if h is None or h.state != state:
        return None
    if reason is None:
        return h if h.reason is None else None
    return h if reason in (h.reason or "") else None
