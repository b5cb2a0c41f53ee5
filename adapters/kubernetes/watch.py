"""Pod readiness of the nodes a pool runs: classification (pure) and the watch loop.

One watch per (namespace, pool) runs in a daemon thread: list, then watch from the list's
resourceVersion, resume from the last seen version when the server ends the stream, relist on
410 Gone. Events are handed to the event loop through an asyncio.Queue.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any

from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from adapters.base import ProviderNodeStatus
from adapters.kubernetes.manifests import NODE

log = logging.getLogger(__name__)

FAILED_WAITING = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}


@dataclass(frozen=True)
class PodView:
    """What the provider needs from a pod, whichever way it was read (typed model or watch object)."""

    name: str
    node_id: str | None
    phase: str
    ready: bool
    deleting: bool
    scheduled_reason: str | None  # PodScheduled=False reason (Unschedulable) + message
    scheduled_message: str | None
    waiting_reason: str | None
    waiting_message: str | None
    ready_reason: str | None
    created: float
    port: int | None = None


def pod_view(pod: Any) -> PodView:
    meta, status = pod.metadata, pod.status
    conds = {c.type: c for c in (status.conditions or [])} if status else {}
    ready = conds.get("Ready")
    sched = conds.get("PodScheduled")
    waiting_reason = waiting_message = None
    for cs in (status.container_statuses or []) if status else []:
        w = cs.state.waiting if cs.state else None
        if w is not None and w.reason:
            waiting_reason, waiting_message = w.reason, w.message
            break
    created = meta.creation_timestamp.timestamp() if meta.creation_timestamp else 0.0
    port = None
    containers = pod.spec.containers if pod.spec else []
    if containers and containers[0].ports:
        port = containers[0].ports[0].container_port
    return PodView(
        name=meta.name,
        node_id=(meta.labels or {}).get(NODE),
        phase=(status.phase if status else None) or "Pending",
        ready=bool(ready is not None and ready.status == "True"),
        deleting=meta.deletion_timestamp is not None,
        scheduled_reason=sched.reason if sched is not None and sched.status == "False" else None,
        scheduled_message=sched.message if sched is not None and sched.status == "False" else None,
        waiting_reason=waiting_reason,
        waiting_message=waiting_message,
        ready_reason=(ready.message or ready.reason) if ready is not None and ready.status != "True" else None,
        created=created,
        port=port,
    )


def current_pod(pods: list[PodView]) -> PodView | None:
    """The pod that speaks for a node: the newest one not being deleted (else the newest)."""
    if not pods:
        return None
    live = [p for p in pods if not p.deleting] or pods
    return max(live, key=lambda p: (p.created, p.name))


def unschedulable_reason(p: PodView, namespace: str, pool_name: str, gpu_resource: str) -> str | None:
    if p.scheduled_reason != "Unschedulable":
        return None
    msg = p.scheduled_message or "no node fits"
    if f"Insufficient {gpu_resource}" in msg:
        return f"no GPU capacity in namespace {namespace} for pool {pool_name} (scheduler: {msg.strip()})"
    return f"unschedulable in namespace {namespace}: {msg.strip()}"


def classify(
    p: PodView | None, namespace: str, pool_name: str, gpu_resource: str
) -> tuple[ProviderNodeStatus, str | None]:
    """One node's status from its current pod."""
    if p is None:
        return ProviderNodeStatus.PENDING, "waiting for the pod to be created"
    if p.waiting_reason in FAILED_WAITING:
        return ProviderNodeStatus.FAILED, f"{p.waiting_reason}: {p.waiting_message or p.name}"
    if p.phase == "Failed":
        return ProviderNodeStatus.FAILED, f"pod {p.name} failed"
    if p.ready and not p.deleting:
        return ProviderNodeStatus.RUNNING, None
    reason = unschedulable_reason(p, namespace, pool_name, gpu_resource)
    if reason:
        return ProviderNodeStatus.PENDING, reason
    if p.phase == "Pending":
        return ProviderNodeStatus.PENDING, p.waiting_reason or "pod pending"
    return ProviderNodeStatus.PENDING, p.ready_reason or "pod not ready"


class PodWatch:
    """Lists then watches a namespace's pods with a label selector in a daemon thread."""

    def __init__(self, core: Any, namespace: str, selector: str, timeout_s: int = 30) -> None:
        self.core = core
        self.namespace = namespace
        self.selector = selector
        self.timeout_s = timeout_s
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._watch: k8s_watch.Watch | None = None
        self.relists = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"k8s-watch:{self.namespace}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def _put(self, kind: str, obj: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self.queue.put_nowait, (kind, obj))
        except RuntimeError:  # the loop is closed: nobody listens any more
            self._stop.set()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                pods = self.core.list_namespaced_pod(
                    self.namespace, label_selector=self.selector, _request_timeout=(5, 30)
                )
                self.relists += 1
                self._put("LIST", pods.items)
                rv = pods.metadata.resource_version
                rv = self._stream(rv)
                if rv is None:
                    continue  # 410 Gone: relist
        except Exception as exc:  # handed to the loop: watch_health raises and the pool restarts it
            self._put("ERROR", exc)

    def _stream(self, rv: str) -> str | None:
        """Watch from rv until stopped; return None when the version is too old (relist)."""
        while not self._stop.is_set():
            self._watch = k8s_watch.Watch()
            try:
                for ev in self._watch.stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    label_selector=self.selector,
                    resource_version=rv,
                    timeout_seconds=self.timeout_s,
                    allow_watch_bookmarks=True,
                    _request_timeout=(5, self.timeout_s + 15),
                ):
                    if self._stop.is_set():
                        return rv
                    kind, obj = ev["type"], ev["object"]
                    if kind == "ERROR":
                        code = obj.get("code") if isinstance(obj, dict) else getattr(obj, "code", None)
                        if code == 410:
                            return None
                        raise RuntimeError(f"pod watch error: {obj}")
                    if kind == "BOOKMARK":
                        raw = ev.get("raw_object") or {}
                        rv = (raw.get("metadata") or {}).get("resourceVersion") or rv
                        continue
                    rv = self._watch.resource_version or rv
                    self._put(kind, obj)
            except ApiException as exc:
                if exc.status == 410:
                    return None
                raise
        return rv
