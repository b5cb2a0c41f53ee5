"""KubernetesAdapter: a pool's nodes are Deployments (replicas 1) + Services + Secrets on a cluster."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any, ClassVar

from adapters.base import (
    Capabilities,
    HealthReporter,
    NodeHealth,
    NodeRef,
    NodeStatus,
    PermanentProviderError,
    ProviderAdapter,
    ProviderNodeStatus,
    ProvisionedNode,
    ProvisionRequest,
    ResourceOffer,
)
from adapters.kubernetes import manifests as m
from adapters.kubernetes.client import Conflict, KubeClient, NotFound
from adapters.kubernetes.config import KubeConfig, parse
from adapters.kubernetes.resources import offers
from adapters.kubernetes.watch import PodView, PodWatch, classify, current_pod, pod_view

log = logging.getLogger(__name__)

FOREGROUND = {"propagationPolicy": "Foreground"}
WATCH_BACKOFF_S = 0.5
WATCH_BACKOFF_MAX_S = 10.0


class KubernetesAdapter(ProviderAdapter):
    name: ClassVar[str] = "kubernetes"
    capabilities: ClassVar[Capabilities] = Capabilities(container_native=True, gpus=True, reports_health=True)

    def __init__(self, pool_id: str, config: dict[str, Any] | None = None, data_dir: str | None = None) -> None:
        super().__init__(pool_id, config, data_dir)
        self.cfg: KubeConfig = parse(self.config)
        self._client: KubeClient | None = None
        self._client_lock = asyncio.Lock()
        self._ns_ready = False
        self._endpoints: dict[str, str | None] = {}
        self._node_host: str | None = None

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        parse(config)
        return dict(config)

    @property
    def ns(self) -> str:
        return self.cfg.namespace

    async def kube(self) -> KubeClient:
        async with self._client_lock:
            if self._client is None:
                self._client = await asyncio.to_thread(KubeClient.from_config, self.cfg)
            return self._client

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None

    # ------------------------------------------------------------ namespace
    async def _ensure_namespace(self) -> None:
        if self._ns_ready:
            return
        c = await self.kube()
        try:
            await c.call("read namespace", c.core.read_namespace, self.ns)
        except NotFound:
            if not self.cfg.create_namespace:
                raise PermanentProviderError(
                    f"namespace {self.ns} does not exist (create_namespace is false)"
                ) from None
            body = {"metadata": {"name": self.ns, "labels": {m.MANAGED_BY: m.MANAGER}}}
            try:
                await c.call("create namespace", c.core.create_namespace, body)
            except Conflict:
                pass
            except PermanentProviderError as exc:
                raise PermanentProviderError(
                    f"namespace {self.ns} does not exist and could not be created: {exc}"
                ) from None
        except PermanentProviderError as exc:
            if "(403)" not in str(exc):
                raise
            # a namespaced Role cannot read Namespace objects: the namespace is the admin's job then
        self._ns_ready = True

    def _missing_namespace(self, exc: NotFound) -> PermanentProviderError:
        self._ns_ready = False
        return PermanentProviderError(f"namespace {self.ns} does not exist; create it or allow the provider to: {exc}")

    # ------------------------------------------------------------ endpoints
    async def _endpoint(self, svc: Any) -> str | None:
        port = svc.spec.ports[0]
        if self.cfg.service_type == "ClusterIP":
            return f"http://{svc.metadata.name}.{self.ns}.svc.{self.cfg.cluster_domain}:{port.port}"
        if self.cfg.service_type == "NodePort":
            host = self.cfg.external_host or await self._a_node_address()
            return f"http://{host}:{port.node_port}" if host and port.node_port else None
        ingress = (svc.status.load_balancer.ingress or []) if svc.status and svc.status.load_balancer else []
        for ing in ingress:
            host = ing.ip or ing.hostname
            if host:
                return f"http://{host}:{port.port}"
        return None  # not assigned yet: list_nodes fills it in later

    async def _a_node_address(self) -> str | None:
        if self._node_host is None:
            c = await self.kube()
            nodes = await c.call("list nodes (NodePort address)", c.core.list_node)
            for kind in ("ExternalIP", "InternalIP", "Hostname"):
                for n in nodes.items:
                    for a in (n.status.addresses or []) if n.status else []:
                        if a.type == kind and self._node_host is None:
                            self._node_host = a.address
        return self._node_host

    def _health_endpoint(self, node_id: str, pod: PodView | None) -> str | None:
        ep = self._endpoints.get(node_id)
        if ep is None and self.cfg.service_type == "ClusterIP" and pod is not None and pod.port:
            ep = f"http://{m.object_name(node_id)}.{self.ns}.svc.{self.cfg.cluster_domain}:{pod.port}"
        return ep

    # ------------------------------------------------------------ provision
    async def _create_or_get(self, what: str, create: Any, read: Any, body: dict[str, Any], node_id: str) -> Any:
        c = await self.kube()
        name = body["metadata"]["name"]
        try:
            return await c.call(f"create {what} {name}", create, self.ns, body)
        except Conflict:
            obj = await c.call(f"read {what} {name}", read, name, self.ns)
        except NotFound as exc:
            raise self._missing_namespace(exc) from None
        owner = (obj.metadata.labels or {}).get(m.NODE)
        if owner != m.label_value(node_id):  # a retry finds its own object; anything else is a collision
            raise PermanentProviderError(f"{what} {self.ns}/{name} exists and does not belong to node {node_id}")
        return obj

    async def provision_node(self, req: ProvisionRequest) -> ProvisionedNode:
        w = req.workload
        if w is None:
            raise PermanentProviderError("kubernetes nodes run a model: idle capacity nodes are not supported")
        m.engine_of(w)
        port = m.port_of(w)
        await self._ensure_namespace()
        c = await self.kube()
        node_id, pool_id = req.node_id, self.pool_id
        secret = m.build_secret(node_id, pool_id, w, self.ns)
        await self._create_or_get(
            "secret", c.core.create_namespaced_secret, c.core.read_namespaced_secret, secret, node_id
        )
        svc_body = m.build_service(node_id, pool_id, w, self.cfg, port)
        svc = await self._create_or_get(
            "service", c.core.create_namespaced_service, c.core.read_namespaced_service, svc_body, node_id
        )
        endpoint = await self._endpoint(svc)
        gpu_type = (req.offer.gpu_type if req.offer else None) or self.cfg.gpu_product
        ann = {m.MODEL_ANN: w.model_name, m.SERVED_ANN: m.served_model(w), m.GPU_COUNT_ANN: str(w.gpus)}
        if endpoint:
            ann[m.ENDPOINT_ANN] = endpoint
        if gpu_type:
            ann[m.GPU_TYPE_ANN] = gpu_type
        dep_body = m.build_deployment(node_id, pool_id, w, self.cfg, ann, gpu_type)
        dep = await self._create_or_get(
            "deployment", c.apps.create_namespaced_deployment, c.apps.read_namespaced_deployment, dep_body, node_id
        )
        self._endpoints[node_id] = endpoint
        return self._provisioned(node_id, dep, endpoint)

    def _provisioned(self, node_id: str, dep: Any, endpoint: str | None) -> ProvisionedNode:
        ann = dep.metadata.annotations or {} if dep is not None else {}
        lab = dep.metadata.labels or {} if dep is not None else {}
        return ProvisionedNode(
            node_id=node_id,
            pool_id=self.pool_id,
            provider_instance_id=f"{self.ns}/{m.object_name(node_id)}",
            endpoint=endpoint,
            gpu_type=ann.get(m.GPU_TYPE_ANN),
            gpu_count=int(ann.get(m.GPU_COUNT_ANN, "0") or 0),
            deployment_id=lab.get(m.DEPLOYMENT),
            resources={
                "namespace": self.ns,
                "k8s_name": m.object_name(node_id),
                "served_model": ann.get(m.SERVED_ANN),
            },
        )

    # ------------------------------------------------------------ truth
    async def list_nodes(self, pool_id: str) -> list[ProvisionedNode]:
        c = await self.kube()
        sel = m.pool_selector(pool_id)
        try:
            deps = await c.call("list deployments", c.apps.list_namespaced_deployment, self.ns, label_selector=sel)
            svcs = await c.call("list services", c.core.list_namespaced_service, self.ns, label_selector=sel)
            secs = await c.call("list secrets", c.core.list_namespaced_secret, self.ns, label_selector=sel)
        except NotFound:
            return []  # no namespace: nothing of ours
        svc_by_node = {(s.metadata.labels or {}).get(m.NODE): s for s in svcs.items}
        out: dict[str, ProvisionedNode] = {}
        for d in deps.items:
            node_id = (d.metadata.labels or {}).get(m.NODE)
            if not node_id or d.metadata.deletion_timestamp is not None:
                continue
            svc = svc_by_node.get(node_id)
            ep = (d.metadata.annotations or {}).get(m.ENDPOINT_ANN)
            if svc is not None and (ep is None or self.cfg.service_type != "ClusterIP"):
                ep = await self._endpoint(svc) or ep
            self._endpoints[node_id] = ep
            out[node_id] = self._provisioned(node_id, d, ep)
        # leftovers of a provision that stopped half-way (no Deployment yet): still ours to clean
        for obj in list(svcs.items) + list(secs.items):
            node_id = (obj.metadata.labels or {}).get(m.NODE)
            if node_id and node_id not in out and obj.metadata.deletion_timestamp is None:
                out[node_id] = self._provisioned(node_id, None, None)
        return list(out.values())

    async def _pods(self, node_id: str) -> list[PodView]:
        c = await self.kube()
        pods = await c.call(
            "list pods", c.core.list_namespaced_pod, self.ns, label_selector=m.node_selector_string(node_id)
        )
        return [pod_view(p) for p in pods.items]

    async def get_node_status(self, node: NodeRef) -> NodeStatus:
        c = await self.kube()
        name = m.object_name(node.node_id)
        try:
            dep = await c.call("read deployment", c.apps.read_namespaced_deployment, name, self.ns)
            if dep.metadata.deletion_timestamp is not None:
                return NodeStatus(ProviderNodeStatus.TERMINATED, "being deleted")
            pods = await self._pods(node.node_id)
        except NotFound:
            return NodeStatus(ProviderNodeStatus.TERMINATED, "deployment not found")
        except Exception as exc:  # transient or not, we could not tell: never act on it
            return NodeStatus(ProviderNodeStatus.UNKNOWN, str(exc))
        status, reason = classify(current_pod(pods), self.ns, self.pool_id, self.cfg.gpu_resource)
        return NodeStatus(status, reason)

    async def deprovision_node(self, node: NodeRef) -> None:
        c = await self.kube()
        name = m.object_name(node.node_id)
        calls: tuple[tuple[str, Any, str, dict[str, Any]], ...] = (
            ("deployment", c.apps.delete_namespaced_deployment, name, {}),
            # the v1.20 server answers a Status the typed model refuses: skip decoding it
            ("service", c.core.delete_namespaced_service, name, {"_preload_content": False}),
            ("secret", c.core.delete_namespaced_secret, m.secret_name(node.node_id), {}),
        )
        for what, fn, obj_name, extra in calls:
            try:
                await c.call(f"delete {what} {obj_name}", fn, obj_name, self.ns, body=FOREGROUND, **extra)
            except NotFound:
                pass  # already gone is success
        self._endpoints.pop(node.node_id, None)

    async def discover_resources(self) -> list[ResourceOffer]:
        c = await self.kube()
        nodes = await c.call("list nodes", c.core.list_node)
        pods = await c.call(
            "list pods",
            c.core.list_pod_for_all_namespaces,
            field_selector="status.phase!=Succeeded,status.phase!=Failed",
        )
        return offers(nodes.items, pods.items, self.cfg, self.cfg.context or self.ns)

    async def get_logs(self, node: NodeRef, tail: int = 100) -> list[str]:
        try:
            pods = await self._pods(node.node_id)
        except NotFound:
            return []
        pod = current_pod(pods)
        status, reason = classify(pod, self.ns, self.pool_id, self.cfg.gpu_resource)
        head = [
            f"[kubernetes] {self.ns}/{pod.name if pod else m.object_name(node.node_id)}: {status}"
            + (f": {reason}" if reason else "")
        ]
        if pod is None:
            return head
        c = await self.kube()
        try:
            text = await c.call(
                "read log", c.core.read_namespaced_pod_log, pod.name, self.ns, container=m.CONTAINER, tail_lines=tail
            )
        except Exception as exc:  # a pending pod has no log yet
            return [*head, f"[kubernetes] no log: {exc}"]
        return head + str(text).splitlines()[-tail:]

    # ------------------------------------------------------------ health (pod readiness -> heartbeats)
    async def watch_health(self, report: HealthReporter) -> None:
        """Pod readiness -> health reports. An API-server outage (the watch fails) keeps the last known
        health, each report marked stale, while the watch reconnects with backoff: healthy pods stay in
        the routing table; nothing is failed for want of news."""
        c = await self.kube()
        tracker = HealthTracker(self)
        delay = WATCH_BACKOFF_S
        while True:
            watch = PodWatch(c.core, self.ns, m.pool_selector(self.pool_id))
            watch.start()
            try:
                while True:
                    try:
                        kind, obj = await asyncio.wait_for(watch.queue.get(), timeout=1.0)
                    except TimeoutError:
                        changed = tracker.tick()
                    else:
                        if kind == "ERROR":
                            raise obj if isinstance(obj, Exception) else RuntimeError(str(obj))
                        if kind == "LIST":
                            delay = WATCH_BACKOFF_S
                        changed = tracker.apply(kind, obj)
                    if changed:
                        await report(changed)
            except Exception as exc:
                stale = tracker.stale(f"kubernetes API unreachable ({type(exc).__name__}); last known health")
                log.warning(
                    "pool %s: pod watch lost (%s); keeping the last known health of %d nodes, retrying in %.1f s",
                    self.pool_id,
                    exc,
                    len(stale),
                    delay,
                )
                if stale:
                    await report(stale)
            finally:
                watch.stop()
            await asyncio.sleep(delay)
            delay = min(delay * 2, WATCH_BACKOFF_MAX_S)


class HealthTracker:
    """Pods per node -> NodeHealth; reports only what changed (everything after a relist).

    Hysteresis: a pod that was ready and turns not ready reports `starting` (out of the routing table,
    not replaced) and `failed` only after `unready_timeout_s` of not being ready again; a crash loop or a
    failed pod is `failed` at once."""

    def __init__(self, adapter: KubernetesAdapter, clock: Any = time.monotonic) -> None:
        self.a = adapter
        self.clock = clock
        self.pods: dict[str, dict[str, PodView]] = {}
        self.was_ready: set[str] = set()
        self.last: dict[str, NodeHealth] = {}
        self.pending_since: dict[str, float] = {}
        self.unready_since: dict[str, float] = {}

    def apply(self, kind: str, obj: Any) -> list[NodeHealth]:
        if kind == "LIST":
            self.pods = {}
            for p in obj:
                v = pod_view(p)
                if v.node_id:
                    self.pods.setdefault(v.node_id, {})[v.name] = v
            for gone in [n for n in self.last if n not in self.pods]:
                self.last.pop(gone, None)
                self.was_ready.discard(gone)
                self.pending_since.pop(gone, None)
                self.unready_since.pop(gone, None)
            self.last = {}  # after a (re)list every node is reported again, fresh
            return [self._health(n) for n in self.pods]
        v = pod_view(obj)
        if not v.node_id:
            return []
        if kind == "DELETED":
            self.pods.get(v.node_id, {}).pop(v.name, None)
        else:
            self.pods.setdefault(v.node_id, {})[v.name] = v
        return self._changed([v.node_id])

    def tick(self) -> list[NodeHealth]:
        return self._changed(list(dict.fromkeys([*self.pending_since, *self.unready_since])))

    def stale(self, why: str) -> list[NodeHealth]:
        """The last known health of every node, marked stale (the API cannot be read)."""
        out = []
        for n, h in self.last.items():
            reason = f"{why}: {h.reason}" if h.reason else why
            out.append(replace(h, reason=reason))
            self.last[n] = out[-1]
        return out

    def _changed(self, node_ids: list[str]) -> list[NodeHealth]:
        out = []
        for n in node_ids:
            prev = self.last.get(n)
            h = self._health(n)
            if h != prev:
                out.append(h)
        return out

    def _health(self, node_id: str) -> NodeHealth:
        a = self.a
        pod = current_pod(list(self.pods.get(node_id, {}).values()))
        status, reason = classify(pod, a.ns, a.pool_id, a.cfg.gpu_resource)
        ep = a._health_endpoint(node_id, pod)
        if status != ProviderNodeStatus.RUNNING and node_id not in self.was_ready:
            self.unready_since.pop(node_id, None)
        if status == ProviderNodeStatus.RUNNING:
            self.was_ready.add(node_id)
            self.pending_since.pop(node_id, None)
            self.unready_since.pop(node_id, None)
            h = NodeHealth(node_id, "ready", ep, None, 100)
        elif status == ProviderNodeStatus.FAILED:
            h = NodeHealth(node_id, "failed", ep, reason, 0)
        elif node_id in self.was_ready:
            name = pod.name if pod else "(deleted)"
            since = self.unready_since.setdefault(node_id, self.clock())
            if self.clock() - since >= a.cfg.unready_timeout_s:
                h = NodeHealth(node_id, "failed", ep, f"pod {name} is no longer ready: {reason}", 0)
            else:
                h = NodeHealth(node_id, "starting", ep, f"pod {name} is not ready (for now): {reason}", 0)
        elif reason and (reason.startswith("no GPU capacity") or reason.startswith("unschedulable")):
            since = self.pending_since.setdefault(node_id, self.clock())
            late = self.clock() - since >= a.cfg.unschedulable_timeout_s
            h = NodeHealth(node_id, "failed" if late else "starting", ep, reason, 0)
        else:
            self.pending_since.pop(node_id, None)
            h = NodeHealth(node_id, "starting", ep, reason, 0)
        self.last[node_id] = h
        return h
