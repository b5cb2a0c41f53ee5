"""An instant, in-process provider for benchmarks and fault tests (not a user-facing provider).

Its "instances" are small JSON files under `<data_dir>/instant/<pool_id>/`, so they outlive a killed
pool actor or a whole control-plane restart, and a test (another process) can read provider truth,
kill an instance behind our back, or make one report failed. It reports node health itself
(`reports_health`), so thousands of nodes need no agent processes.

Register it for every process before the control plane starts:
    INFERIA_ADAPTERS=instant=tests.support.instant:InstantAdapter

Pool config (all optional):
    latency_s            seconds each provision takes (default 0)
    deprovision_latency_s
    timeout_s            how long a "timeout" fault hangs before failing (default 0.2)
    rescan_s             how often watch_health re-reads every instance file, to see changes made behind
                         its back (default 1.0; its own creates and deletes are reported at once)
    endpoint_base        base of each node's endpoint (default http://127.0.0.1:9); endpoint = base/n/<node>
    faults               {"provision"|"deprovision"|"status"|"list": [kind, ...]}: the k-th call of that
                         operation for a node fails with the k-th kind (per pool for "list"); a kind ending
                         in "*" repeats forever. Kinds: "429", "500", "503", "timeout", "lost_reply" (the
                         instance is created, then the reply is lost), "permanent".
Every create and delete is appended to `journal.log` in the pool's directory ("create <node>" /
"delete <node>"), so a test can prove nothing was created twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
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
    TemporaryProviderError,
)

OPS = ("provision", "deprovision", "status", "list")
KINDS = ("429", "500", "503", "timeout", "lost_reply", "permanent")
ENV_ADAPTERS = "instant=tests.support.instant:InstantAdapter"


def root_for(data_dir: str | Path) -> Path:
    return Path(data_dir) / "instant"


def pool_dir(data_dir: str | Path, pool_id: str) -> Path:
    return root_for(data_dir) / pool_id


def instances(data_dir: str | Path, pool_id: str | None = None) -> dict[str, dict[str, Any]]:
    """Provider truth as a test sees it: node id -> instance record (every pool when pool_id is None)."""
    root = root_for(data_dir)
    dirs = [root / pool_id] if pool_id else (sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else [])
    out: dict[str, dict[str, Any]] = {}
    for d in dirs:
        for f in d.glob("*.json") if d.exists() else []:
            rec = _read(f)
            if rec is not None:
                out[rec["node_id"]] = rec
    return out


def journal(data_dir: str | Path, pool_id: str) -> list[tuple[str, str]]:
    f = pool_dir(data_dir, pool_id) / "journal.log"
    if not f.exists():
        return []
    return [tuple(line.split(" ", 1)) for line in f.read_text().splitlines() if " " in line]  # type: ignore[misc]


def set_health(data_dir: str | Path, pool_id: str, node_id: str, state: str) -> None:
    """Make an instance report `state` (ready | failed | starting) from now on."""
    f = pool_dir(data_dir, pool_id) / f"{node_id}.json"
    rec = _read(f)
    if rec is None:
        raise KeyError(node_id)
    rec["health"] = state
    _write(f, rec)


def kill(data_dir: str | Path, pool_id: str, node_id: str) -> None:
    """The instance disappears at the provider (preempted, deleted by hand)."""
    (pool_dir(data_dir, pool_id) / f"{node_id}.json").unlink(missing_ok=True)


def _read(f: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(f.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and "node_id" in data else None


def _write(f: Path, rec: dict[str, Any]) -> None:
    tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rec))
    os.replace(tmp, f)


class InstantAdapter(ProviderAdapter):
    name = "instant"
    capabilities: ClassVar[Capabilities] = Capabilities(ephemeral=True, reports_health=True)

    def __init__(self, pool_id: str, config: dict[str, Any] | None = None, data_dir: str | None = None) -> None:
        super().__init__(pool_id, config, data_dir)
        self.config = self.validate_config(self.config)
        self.dir = pool_dir(data_dir or os.environ.get("INFERIA_DATA_DIR", "."), pool_id)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._calls: dict[tuple[str, str], int] = {}
        self._changed = asyncio.Event()
        self._dirty: dict[str, dict[str, Any] | None] = {}  # our own creates (record) and deletes (None)

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        out = dict(config or {})
        defaults = {"timeout_s": 0.2, "rescan_s": 1.0}
        for key in ("latency_s", "deprovision_latency_s", "timeout_s", "rescan_s"):
            v = out.get(key, defaults.get(key, 0.0))
            if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v <= 600:
                raise ValueError(f"{key} must be a number of seconds between 0 and 600")
            out[key] = float(v)
        if out["rescan_s"] < 0.05:
            raise ValueError("rescan_s must be at least 0.05 seconds")
        base = out.get("endpoint_base", "http://127.0.0.1:9")
        if not isinstance(base, str) or not base.startswith(("http://", "https://")):
            raise ValueError("endpoint_base must be an http(s) URL")
        out["endpoint_base"] = base.rstrip("/")
        faults = out.get("faults", {})
        if not isinstance(faults, dict):
            raise ValueError("faults must be an object of operation -> list of fault kinds")
        for op, kinds in faults.items():
            if op not in OPS:
                raise ValueError(f"faults.{op}: unknown operation; one of {', '.join(OPS)}")
            if not isinstance(kinds, list) or not all(isinstance(k, str) and k.rstrip("*") in KINDS for k in kinds):
                raise ValueError(f"faults.{op} must be a list of: {', '.join(KINDS)} (a trailing * repeats)")
        out["faults"] = faults
        return out

    # ------------------------------------------------------------------ faults
    def _count(self, op: str, key: str) -> int:
        """How many earlier calls of op for key; persisted so a restarted actor goes on where it was."""
        n = self._calls.get((op, key))
        f = self.dir / f".calls.{op}.{key}"
        if n is None:
            try:
                n = int(f.read_text())
            except (FileNotFoundError, ValueError):
                n = 0
        self._calls[(op, key)] = n + 1
        if self.config["faults"].get(op):
            f.write_text(str(n + 1))
        return n

    def _fault(self, op: str, key: str) -> str | None:
        kinds: list[str] = self.config["faults"].get(op) or []
        if not kinds:
            return None
        n = self._count(op, key)
        if n < len(kinds):
            return kinds[n].rstrip("*")
        return kinds[-1][:-1] if kinds[-1].endswith("*") else None

    async def _raise(self, kind: str, what: str) -> None:
        if kind == "timeout":
            await asyncio.sleep(float(self.config["timeout_s"]))
            raise TemporaryProviderError(f"{what}: timed out")
        if kind == "permanent":
            raise PermanentProviderError(f"{what}: refused by the provider")
        if kind == "lost_reply":
            raise TemporaryProviderError(f"{what}: connection reset before the reply")
        raise TemporaryProviderError(f"{what}: HTTP {kind}")

    # ------------------------------------------------------------------ contract
    async def discover_resources(self) -> list[ResourceOffer]:
        return [ResourceOffer(provider=self.name, region="instant", available=1_000_000)]

    def _file(self, node_id: str) -> Path:
        if not node_id or "/" in node_id or node_id.startswith("."):
            raise PermanentProviderError("bad node id")
        return self.dir / f"{node_id}.json"

    def _node(self, rec: dict[str, Any]) -> ProvisionedNode:
        return ProvisionedNode(
            node_id=rec["node_id"],
            pool_id=self.pool_id,
            provider_instance_id=rec["instance_id"],
            endpoint=rec.get("endpoint"),
            deployment_id=rec.get("deployment_id"),
            resources={"served_model": rec.get("model")} if rec.get("model") else {},
        )

    def _journal(self, line: str) -> None:
        with open(self.dir / "journal.log", "a") as fh:
            fh.write(line + "\n")

    async def provision_node(self, req: ProvisionRequest) -> ProvisionedNode:
        f = self._file(req.node_id)
        fault = self._fault("provision", req.node_id)
        if fault is not None and fault != "lost_reply":
            await self._raise(fault, f"provision {req.node_id}")
        if self.config["latency_s"]:
            await asyncio.sleep(self.config["latency_s"])
        rec = _read(f)
        if rec is None:
            wl = req.workload
            rec = {
                "node_id": req.node_id,
                "pool_id": self.pool_id,
                "instance_id": f"i-{req.node_id}",
                "endpoint": f"{self.config['endpoint_base']}/n/{req.node_id}",
                "deployment_id": wl.deployment_id if wl else None,
                "model": wl.model_name if wl else None,
                "args": list(wl.args) if wl else [],  # what it would run (rolling-update tests read it)
                "health": "ready",
                "created_at": time.time(),
            }
            _write(f, rec)
            self._journal(f"create {req.node_id}")
            self._dirty[req.node_id] = rec
            self._changed.set()
        if fault == "lost_reply":
            await self._raise(fault, f"provision {req.node_id}")
        return self._node(rec)

    async def deprovision_node(self, node: NodeRef) -> None:
        fault = self._fault("deprovision", node.node_id)
        if fault is not None:
            if fault == "lost_reply":
                self._delete(node.node_id)
            await self._raise(fault, f"deprovision {node.node_id}")
        if self.config["deprovision_latency_s"]:
            await asyncio.sleep(self.config["deprovision_latency_s"])
        self._delete(node.node_id)

    def _delete(self, node_id: str) -> None:
        f = self._file(node_id)
        if f.exists():
            f.unlink(missing_ok=True)
            self._journal(f"delete {node_id}")
            self._dirty[node_id] = None
            self._changed.set()

    async def get_node_status(self, node: NodeRef) -> NodeStatus:
        fault = self._fault("status", node.node_id)
        if fault is not None:
            return NodeStatus(ProviderNodeStatus.UNKNOWN, f"status: {fault}")
        rec = _read(self._file(node.node_id))
        if rec is None:
            return NodeStatus(ProviderNodeStatus.TERMINATED)
        if rec.get("health") == "failed":
            return NodeStatus(ProviderNodeStatus.FAILED, "instance failed")
        return NodeStatus(ProviderNodeStatus.RUNNING)

    async def list_nodes(self, pool_id: str) -> list[ProvisionedNode]:
        fault = self._fault("list", "pool")
        if fault is not None:
            await self._raise(fault, "list nodes")
        return [self._node(rec) for rec in instances(self.dir.parent.parent, pool_id).values()]

    async def get_logs(self, node: NodeRef, tail: int = 100) -> list[str]:
        rec = _read(self._file(node.node_id))
        return [] if rec is None else [f"instant node {node.node_id} up since {rec['created_at']:.3f}"][-tail:]

    async def watch_health(self, report: HealthReporter) -> None:
        """Report every instance's health once, then each change: at once for our own creates and
        deletes, within a second for changes made behind our back (a test killing an instance)."""
        last: dict[str, str] = {}
        rescan_at = 0.0
        while True:
            if time.monotonic() >= rescan_at:  # full provider truth, catching changes behind our back
                current: dict[str, dict[str, Any] | None] = dict(instances(self.dir.parent.parent, self.pool_id))
                current.update({n: None for n in last if n not in current})
                rescan_at = time.monotonic() + float(self.config["rescan_s"])
            else:
                current = {}
            current.update(self._dirty)
            self._dirty = {}
            changes = []
            for node_id, rec in current.items():
                if rec is None:
                    if last.pop(node_id, None) is not None:
                        changes.append(NodeHealth(node_id, "failed", reason="instance gone"))
                    continue
                state = str(rec.get("health") or "ready")
                if last.get(node_id) != state:
                    changes.append(NodeHealth(node_id, state, endpoint=rec.get("endpoint")))
                    last[node_id] = state
            if changes:
                await report(changes)
            if not self._dirty:
                self._changed.clear()
                try:
                    async with asyncio.timeout(max(0.0, rescan_at - time.monotonic())):
                        await self._changed.wait()
                except TimeoutError:
                    pass
