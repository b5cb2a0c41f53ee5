"""Pure parts of the Kubernetes provider: config validation, manifests, pod classification, errors."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from adapters.base import PermanentProviderError, ProviderNodeStatus, TemporaryProviderError, WorkloadSpec
from adapters.kubernetes import manifests as m
from adapters.kubernetes.adapter import HealthTracker, KubernetesAdapter
from adapters.kubernetes.client import Conflict, NotFound, translate
from adapters.kubernetes.config import parse
from adapters.kubernetes.watch import classify, pod_view


def _w(**kw: object) -> WorkloadSpec:
    base: dict[str, object] = {"deployment_id": "dep-1", "model_name": "m", "engine": "vllm", "source": "org/m"}
    base.update(kw)
    return WorkloadSpec(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"namespace": "Bad_NS"}, "namespace"),
        ({"service_type": "Ingress"}, "service_type"),
        ({"tolerations": [{"key": "a", "bogus": 1}]}, "tolerations"),
        ({"node_selector": {"a": 1}}, "node_selector"),
        ({"image_pull_secrets": "x"}, "image_pull_secrets"),
        ({"in_cluster": True, "kubeconfig": "/k"}, "in_cluster"),
        ({"unschedulable_timeout_s": -1}, "unschedulable_timeout_s"),
        ({"nope": 1}, "nope"),
    ],
)
def test_validate_config_names_the_key(cfg: dict[str, object], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        KubernetesAdapter.validate_config(cfg)


def test_defaults() -> None:
    c = parse({})
    assert (c.namespace, c.gpu_resource, c.gpu_product_label, c.service_type) == (
        "inferia",
        "nvidia.com/gpu",
        "nvidia.com/gpu.product",
        "ClusterIP",
    )


def test_names_are_dns_labels_and_stable() -> None:
    assert m.object_name("node-abc") == "node-abc"
    assert m.object_name("Node_ABC") == "node-abc"
    assert m.object_name("1abc")[0].isalpha()
    long = m.object_name("node-" + "x" * 100)
    assert len(long) <= 55 and long == m.object_name("node-" + "x" * 100)


def test_deployment_shape() -> None:
    cfg = parse(
        {
            "namespace": "ns",
            "node_selector": {"pool": "gpu"},
            "image_pull_secrets": ["reg"],
            "model_cache_pvc": "cache",
            "gpu_product": "NVIDIA-H100",
        }
    )
    d = m.build_deployment("node-1", "pool-1", _w(gpus=2, inference_key="ik_x", env={"A": "1"}), cfg, {})
    spec = d["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert d["spec"]["replicas"] == 1 and d["metadata"]["labels"][m.MANAGED_BY] == "inferia"
    assert c["image"] == "vllm/vllm-openai:latest" and c["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    assert spec["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-H100"}
    assert spec["imagePullSecrets"] == [{"name": "reg"}]
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "cache"}} in spec["volumes"]
    assert "ik_x" not in json.dumps(d)  # the key only travels through the Secret
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
    assert refs["VLLM_API_KEY"] == {"name": "node-1-key", "key": "inference-key"}
    assert m.build_secret("node-1", "pool-1", _w(inference_key="ik_x"), "ns")["stringData"] == {"inference-key": "ik_x"}


def test_engines() -> None:
    cfg = parse({})
    llama = m.build_deployment("n", "p", _w(engine="llamacpp", source="/models/a.gguf", gpus=1), cfg, {})
    c = llama["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][:2] == ["-m", "/models/a.gguf"] and "-ngl" in c["args"]
    ollama = m.build_deployment("n", "p", _w(engine="ollama", source="llama3"), cfg, {})
    c = ollama["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "ollama/ollama:latest" and c["ports"][0]["containerPort"] == 11434
    img = m.build_deployment("n", "p", _w(engine="vllm", image="my/vllm:1", port=9000), cfg, {})
    assert img["spec"]["template"]["spec"]["containers"][0]["image"] == "my/vllm:1"
    with pytest.raises(PermanentProviderError, match="image"):
        m.build_deployment("n", "p", _w(engine="custom"), cfg, {})
    svc = m.build_service("n", "p", _w(), parse({"service_type": "NodePort"}), 8000)
    assert svc["spec"]["type"] == "NodePort" and svc["spec"]["selector"][m.NODE] == "n"


def _pod(name: str = "p1", node: str = "n1", **status: object) -> k8s.V1Pod:
    conds = status.pop("conditions", [])
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, labels={m.NODE: node}, creation_timestamp=dt.datetime.now(dt.UTC)),
        spec=k8s.V1PodSpec(
            containers=[k8s.V1Container(name="engine", ports=[k8s.V1ContainerPort(container_port=8000)])]
        ),
        status=k8s.V1PodStatus(conditions=conds, **status),  # type: ignore[arg-type]
    )


def _cond(t: str, s: str, reason: str | None = None, msg: str | None = None) -> k8s.V1PodCondition:
    return k8s.V1PodCondition(type=t, status=s, reason=reason, message=msg)


def test_classify() -> None:
    unsched = _pod(
        phase="Pending",
        conditions=[
            _cond("PodScheduled", "False", "Unschedulable", "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")
        ],
    )
    st, why = classify(pod_view(unsched), "ns", "pool-1", "nvidia.com/gpu")
    assert (
        st == ProviderNodeStatus.PENDING and why and why.startswith("no GPU capacity in namespace ns for pool pool-1")
    )
    crash = _pod(
        phase="Running",
        container_statuses=[
            k8s.V1ContainerStatus(
                name="engine",
                image="i",
                image_id="",
                ready=False,
                restart_count=3,
                state=k8s.V1ContainerState(
                    waiting=k8s.V1ContainerStateWaiting(reason="ImagePullBackOff", message="nope")
                ),
            )
        ],
    )
    assert classify(pod_view(crash), "ns", "p", "nvidia.com/gpu") == (
        ProviderNodeStatus.FAILED,
        "ImagePullBackOff: nope",
    )
    ready = _pod(phase="Running", conditions=[_cond("Ready", "True")])
    assert classify(pod_view(ready), "ns", "p", "nvidia.com/gpu")[0] == ProviderNodeStatus.RUNNING
    assert classify(None, "ns", "p", "nvidia.com/gpu")[0] == ProviderNodeStatus.PENDING


def test_health_tracker_ready_then_lost_and_unschedulable_timeout() -> None:
    now = [0.0]
    a = KubernetesAdapter("pool-1", {"namespace": "ns", "unschedulable_timeout_s": 5, "unready_timeout_s": 0})
    t = HealthTracker(a, clock=lambda: now[0])
    first = t.apply("LIST", [_pod(phase="Running", conditions=[_cond("Ready", "True")])])
    assert [(h.state, h.endpoint) for h in first] == [("ready", "http://n1.ns.svc.cluster.local:8000")]
    assert t.apply("MODIFIED", _pod(phase="Running", conditions=[_cond("Ready", "True")])) == []  # no change
    lost = t.apply("MODIFIED", _pod(phase="Running", conditions=[_cond("Ready", "False", "ContainersNotReady")]))
    assert lost[0].state == "failed" and "no longer ready" in (lost[0].reason or "")
    assert t.apply("MODIFIED", _pod(phase="Running", conditions=[_cond("Ready", "True")]))[0].state == "ready"
    big = _pod(
        "p2",
        "n2",
        phase="Pending",
        conditions=[_cond("PodScheduled", "False", "Unschedulable", "Insufficient nvidia.com/gpu")],
    )
    (h,) = t.apply("ADDED", big)
    assert h.state == "starting" and (h.reason or "").startswith("no GPU capacity")
    now[0] = 6.0
    (h,) = t.tick()
    assert h.state == "failed" and (h.reason or "").startswith("no GPU capacity")


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, TemporaryProviderError),
        (503, TemporaryProviderError),
        (500, TemporaryProviderError),
        (401, PermanentProviderError),
        (403, PermanentProviderError),
        (422, PermanentProviderError),
        (404, NotFound),
        (409, Conflict),
    ],
)
def test_translate(status: int, kind: type[Exception]) -> None:
    exc = ApiException(status=status, reason="r")
    exc.body = json.dumps({"kind": "Status", "message": f"the API says {status}"})
    out = translate(exc, "create deployment x")
    assert isinstance(out, kind)
    assert f"the API says {status}" in str(out)


def test_translate_transport_errors() -> None:
    import urllib3

    assert isinstance(translate(urllib3.exceptions.ReadTimeoutError(None, "u", "t"), "x"), TemporaryProviderError)  # type: ignore[arg-type]
    assert isinstance(translate(ConnectionRefusedError(), "x"), TemporaryProviderError)


def test_readiness_blip_is_not_a_failure_until_it_lasts() -> None:
    """Issue 10 item 7: a ready pod that turns not ready leaves the table (`starting`), is `failed` (replaced)
    only after unready_timeout_s without being ready again; ready again in time resets the clock."""
    now = [0.0]
    a = KubernetesAdapter("pool-1", {"namespace": "ns", "unready_timeout_s": 10})
    t = HealthTracker(a, clock=lambda: now[0])
    ready = _pod(phase="Running", conditions=[_cond("Ready", "True")])
    unready = _pod(phase="Running", conditions=[_cond("Ready", "False", "ContainersNotReady")])
    assert [h.state for h in t.apply("LIST", [ready])] == ["ready"]
    (blip,) = t.apply("MODIFIED", unready)
    assert blip.state == "starting" and "not ready (for now)" in (blip.reason or "")
    now[0] = 9.0
    assert t.tick() == []  # still within the window: no change
    assert [h.state for h in t.apply("MODIFIED", ready)] == ["ready"]  # back in time
    t.apply("MODIFIED", unready)
    now[0] = 18.0
    assert t.tick() == []  # the clock started again at the second blip
    now[0] = 19.5
    (dead,) = t.tick()
    assert dead.state == "failed" and "no longer ready" in (dead.reason or "")


def test_api_outage_keeps_the_last_known_health_marked_stale() -> None:
    a = KubernetesAdapter("pool-1", {"namespace": "ns"})
    t = HealthTracker(a)
    t.apply("LIST", [_pod(phase="Running", conditions=[_cond("Ready", "True")])])
    (h,) = t.stale("kubernetes API unreachable")
    assert h.state == "ready" and h.endpoint and "unreachable" in (h.reason or "")
