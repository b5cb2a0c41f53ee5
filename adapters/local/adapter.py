"""The local provider: every node is a supervised process group on this machine.

A node is the node agent (`python -m adapters.agent`) in its own session, detached from the
orchestrator so that it outlives it, plus the engine the agent starts as its child. Its state
lives in `{data_dir}/nodes/{pool_id}/{node_id}/node.json`; a restarted orchestrator adopts
every node whose agent still runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from adapters.agent import ENGINE_ENV_ENV, PROBE_KEY_ENV, agent_environ
from adapters.agent import TOKEN_ENV as AGENT_TOKEN_ENV
from adapters.agent import command_line as agent_command_line
from adapters.base import (
    Capabilities,
    NodeRef,
    NodeStatus,
    PermanentProviderError,
    ProviderAdapter,
    ProviderNodeStatus,
    ProvisionedNode,
    ProvisionRequest,
    ResourceOffer,
    TemporaryProviderError,
    WorkloadSpec,
)
from adapters.local import procs
from adapters.local.engines import EngineSpec, build_engine
from adapters.local.gpu import GpuInfo, detect_gpus

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT_RANGE = (20000, 29999)
NODE_FILE = "node.json"
AGENT_LOG = "agent.log"
ENGINE_LOG = "engine.log"
# the directory that holds the `adapters` package, so `python -m adapters.agent` imports
PROJECT_ROOT = Path(__file__).resolve().parents[2]
_MB = 1024 * 1024


def _safe_component(value: str, what: str) -> str:
    if not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value:
        raise PermanentProviderError(f"{what} {value!r} cannot be used as a directory name")
    return value


class LocalAdapter(ProviderAdapter):
    name = "local"
    capabilities = Capabilities(ephemeral=False, container_native=False, gpus=bool(detect_gpus()))

    def __init__(self, pool_id: str, config: dict[str, Any] | None = None, data_dir: str | None = None) -> None:
        super().__init__(pool_id, config, data_dir)
        self.config = self.validate_config(self.config)
        self.host: str = self.config["host"]
        self.port_range: tuple[int, int] = tuple(self.config["port_range"])  # type: ignore[assignment]
        self.max_gpus: int | None = self.config.get("max_gpus")
        base = Path(data_dir) if data_dir else Path("~/.inferia")
        self.nodes_root = base.expanduser() / "nodes"
        self._lock = asyncio.Lock()
        self._provisioning: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ config
    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        out = dict(config or {})
        host = out.get("host", DEFAULT_HOST)
        if not isinstance(host, str) or not host.strip():
            raise ValueError("host must be a non-empty string (an address to bind engines on)")
        out["host"] = host.strip()
        port_range = out.get("port_range", list(DEFAULT_PORT_RANGE))
        if (
            not isinstance(port_range, list | tuple)
            or len(port_range) != 2
            or not all(isinstance(p, int) and not isinstance(p, bool) for p in port_range)
        ):
            raise ValueError("port_range must be a list of two integers [min, max]")
        low, high = int(port_range[0]), int(port_range[1])
        if not 1 <= low <= high <= 65535:
            raise ValueError("port_range must satisfy 1 <= min <= max <= 65535")
        out["port_range"] = [low, high]
        max_gpus = out.get("max_gpus")
        if max_gpus is not None and (not isinstance(max_gpus, int) or isinstance(max_gpus, bool) or max_gpus < 0):
            raise ValueError("max_gpus must be a non-negative integer")
        out["max_gpus"] = max_gpus
        return out

    # ------------------------------------------------------------------ paths
    def _pool_dir(self, pool_id: str) -> Path:
        return self.nodes_root / _safe_component(pool_id, "pool id")

    def _node_dir(self, pool_id: str, node_id: str) -> Path:
        return self._pool_dir(pool_id) / _safe_component(node_id, "node id")

    def _gpus(self) -> list[GpuInfo]:
        gpus = detect_gpus()
        return gpus if self.max_gpus is None else gpus[: self.max_gpus]

    # ------------------------------------------------------------------ resources
    async def discover_resources(self) -> list[ResourceOffer]:
        gpus = await asyncio.to_thread(self._gpus)
        return [
            ResourceOffer(
                provider="local",
                region="local",
                vcpu=os.cpu_count() or 1,
                ram_mb=int(psutil.virtual_memory().total // _MB),
                gpu_type=gpus[0].name if gpus else None,
                gpu_count=len(gpus),
                gpu_memory_mb=gpus[0].memory_mb if gpus else 0,
                price_per_hour=0.0,
                available=1,
            )
        ]

    # ------------------------------------------------------------------ provision
    async def provision_node(self, req: ProvisionRequest) -> ProvisionedNode:
        key = (req.pool_id, req.node_id)
        async with self._lock:
            self._provisioning.add(key)
            try:
                return await asyncio.to_thread(self._provision_sync, req)
            finally:
                self._provisioning.discard(key)

    def _provision_sync(self, req: ProvisionRequest) -> ProvisionedNode:
        node_dir = self._node_dir(req.pool_id, req.node_id)
        record = procs.read_json(node_dir / NODE_FILE)
        if record is not None and procs.pid_alive(record.get("pid"), record.get("create_time")):
            log.info("node %s already runs (agent pid %s)", req.node_id, record.get("pid"))
            return self._to_node(record)
        if record is not None:  # a dead earlier try: clear what is left of its process group
            procs.terminate_group(record.get("pid"), record.get("create_time"))
            (node_dir / NODE_FILE).unlink(missing_ok=True)
        if node_dir.is_dir():  # an earlier try may have died after starting its agent, before recording it
            strays = procs.kill_strays(node_dir)
            if strays:
                log.warning("node %s: stopped %d unrecorded process(es) of an earlier try", req.node_id, len(strays))
        node_dir.mkdir(parents=True, exist_ok=True)

        workload = req.workload
        gpus = self._gpus()
        port: int | None = None
        spec: EngineSpec | None = None
        gpu_indices: list[int] = []
        if workload is not None:
            port = self._pick_port(workload)
            spec = build_engine(workload, self.host, port, available_gpus=len(gpus))
            gpu_indices = self._assign_gpus(workload.gpus, gpus)
            if gpus:  # pin the engine to its own GPUs (none at all for a CPU-only model)
                spec.env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_indices)
        endpoint = f"http://{self._url_host()}:{port}" if port is not None else None

        argv = self._agent_argv(req, node_dir, spec, endpoint)
        env = self._agent_env(req, spec)
        try:
            pid = procs.spawn_detached(argv, env=env, cwd=node_dir, log_path=node_dir / AGENT_LOG)
        except (OSError, ValueError) as exc:
            raise TemporaryProviderError(f"could not start the node agent for {req.node_id}: {exc}") from exc
        create_time = procs.process_create_time(pid)
        if create_time is None:
            tail = " | ".join(procs.tail_lines(node_dir / AGENT_LOG, 5))
            raise TemporaryProviderError(f"the node agent for {req.node_id} exited at once: {tail}")

        gpu_count = workload.gpus if workload is not None else 0
        record = {
            "node_id": req.node_id,
            "pool_id": req.pool_id,
            "deployment_id": workload.deployment_id if workload is not None else None,
            "provider_instance_id": f"local-{req.node_id}",
            "host": self.host,
            "port": port,
            "endpoint": endpoint,
            "pid": pid,
            "create_time": create_time,
            "created_at": datetime.now(UTC).isoformat(),
            "engine": workload.engine if workload is not None else None,
            "served_model": spec.served_model if spec is not None else None,
            "health_path": spec.health_path if spec is not None else None,
            "command": spec.masked_argv() if spec is not None else None,
            "gpu_type": gpus[0].name if gpus and gpu_count else None,
            "gpu_count": gpu_count,
            "gpu_indices": gpu_indices,
        }
        try:
            procs.write_json_atomic(node_dir / NODE_FILE, record)
        except OSError as exc:
            procs.terminate_group(pid, create_time)
            raise TemporaryProviderError(f"could not write the node record of {req.node_id}: {exc}") from exc
        log.info("started node %s: agent pid %d, endpoint %s", req.node_id, pid, endpoint)
        return self._to_node(record)

    def _assign_gpus(self, wanted: int, gpus: list[GpuInfo]) -> list[int]:
        """GPU indices for a new node: ones no live node of any pool on this machine holds."""
        if wanted <= 0:
            return []
        used: set[int] = set()
        for record_path in self.nodes_root.glob("*/*/" + NODE_FILE):
            rec = procs.read_json(record_path)
            if rec and procs.pid_alive(rec.get("pid"), rec.get("create_time")):
                used.update(int(i) for i in rec.get("gpu_indices") or [])
        free = [g.index for g in gpus if g.index not in used]
        if len(free) < wanted:
            raise TemporaryProviderError(
                f"{len(gpus) - len(free)} of this machine's {len(gpus)} GPUs are held by other nodes; "
                f"{wanted} more are needed"
            )
        return free[:wanted]

    def _url_host(self) -> str:
        if self.host in ("0.0.0.0", "::"):
            return "127.0.0.1"
        return f"[{self.host}]" if ":" in self.host else self.host

    def _used_ports(self) -> set[int]:
        used: set[int] = set()
        for path in self.nodes_root.glob(f"*/*/{NODE_FILE}"):
            record = procs.read_json(path)
            if record and isinstance(record.get("port"), int):
                used.add(record["port"])
        return used

    def _pick_port(self, workload: WorkloadSpec) -> int:
        if workload.port is not None:
            if not procs.port_is_free(self.host, workload.port):
                raise TemporaryProviderError(f"port {workload.port} is in use on {self.host}")
            return workload.port
        low, high = self.port_range
        try:
            return procs.find_free_port(self.host, low, high, exclude=self._used_ports())
        except OSError as exc:
            raise TemporaryProviderError(str(exc)) from exc

    def _agent_argv(
        self, req: ProvisionRequest, node_dir: Path, spec: EngineSpec | None, endpoint: str | None
    ) -> list[str]:
        # the key is never on argv: every engine gets it through its env (see engines.py)
        argv = agent_command_line(
            sys.executable,
            req.node_id,
            req.heartbeat_url,
            req.heartbeat_interval_s,
            fallback_url=req.heartbeat_fallback_url,
            endpoint=endpoint,
            health_path=spec.health_path if spec else None,
            engine_cmd=spec.argv if spec else None,
            post_start_cmd=spec.post_start if spec else None,
            metrics_path=spec.metrics_path if spec else None,
        )
        return [*argv, "--engine-log", str(node_dir / ENGINE_LOG)]

    def _agent_env(self, req: ProvisionRequest, spec: EngineSpec | None) -> dict[str, str]:
        """The agent's environment: the allow-list of this process's (adapters/agent.py), never all of it."""
        env = agent_environ(os.environ)
        paths = [str(PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        env["PYTHONUNBUFFERED"] = "1"
        env[AGENT_TOKEN_ENV] = req.node_token
        if spec is not None:
            env[ENGINE_ENV_ENV] = json.dumps(spec.env)
        workload = req.workload
        if workload is not None and workload.inference_key:
            env[PROBE_KEY_ENV] = workload.inference_key
        return env

    def _to_node(self, record: dict[str, Any]) -> ProvisionedNode:
        return ProvisionedNode(
            node_id=record["node_id"],
            pool_id=record["pool_id"],
            provider_instance_id=record.get("provider_instance_id") or f"local-{record['node_id']}",
            endpoint=record.get("endpoint"),
            ip_address=record.get("host") or self.host,
            gpu_type=record.get("gpu_type"),
            gpu_count=int(record.get("gpu_count") or 0),
            vcpu=os.cpu_count() or 1,
            ram_mb=int(psutil.virtual_memory().total // _MB),
            price_per_hour=0.0,
            deployment_id=record.get("deployment_id"),
            resources={
                "port": record.get("port"),
                "engine": record.get("engine"),
                "served_model": record.get("served_model"),
                "health_path": record.get("health_path"),
                "agent_pid": record.get("pid"),
            },
        )

    # ------------------------------------------------------------------ deprovision
    async def deprovision_node(self, node: NodeRef) -> None:
        try:
            await asyncio.to_thread(self._deprovision_sync, node)
        except OSError as exc:
            raise TemporaryProviderError(f"could not remove node {node.node_id}: {exc}") from exc

    def _deprovision_sync(self, node: NodeRef) -> None:
        node_dir = self._node_dir(node.pool_id, node.node_id)
        record = procs.read_json(node_dir / NODE_FILE)
        if record is not None and procs.terminate_group(record.get("pid"), record.get("create_time")):
            log.info("stopped node %s (agent pid %s)", node.node_id, record.get("pid"))
        try:
            shutil.rmtree(node_dir)
        except FileNotFoundError:
            pass  # already gone

    # ------------------------------------------------------------------ status
    async def get_node_status(self, node: NodeRef) -> NodeStatus:
        if (node.pool_id, node.node_id) in self._provisioning:
            return NodeStatus(ProviderNodeStatus.PENDING, "starting the node agent")
        try:
            return await asyncio.to_thread(self._status_sync, node)
        except OSError as exc:
            return NodeStatus(ProviderNodeStatus.UNKNOWN, f"could not read the node state: {exc}")

    def _status_sync(self, node: NodeRef) -> NodeStatus:
        node_dir = self._node_dir(node.pool_id, node.node_id)
        if not node_dir.is_dir():
            return NodeStatus(ProviderNodeStatus.TERMINATED, "not found")
        record = procs.read_json(node_dir / NODE_FILE)
        if record is not None and procs.pid_alive(record.get("pid"), record.get("create_time")):
            return NodeStatus(ProviderNodeStatus.RUNNING)
        return NodeStatus(ProviderNodeStatus.TERMINATED, "agent process exited")

    def _scan(self, pool_id: str) -> list[tuple[str, dict[str, Any] | None, bool]]:
        """(node id, record, agent alive) for every node directory of the pool."""
        pool_dir = self._pool_dir(pool_id)
        if not pool_dir.is_dir():
            return []
        found: list[tuple[str, dict[str, Any] | None, bool]] = []
        for node_dir in sorted(p for p in pool_dir.iterdir() if p.is_dir()):
            record = procs.read_json(node_dir / NODE_FILE)
            alive = record is not None and procs.pid_alive(record.get("pid"), record.get("create_time"))
            found.append((node_dir.name, record, alive))
        return found

    async def _scan_or_raise(self, pool_id: str) -> list[tuple[str, dict[str, Any] | None, bool]]:
        try:
            return await asyncio.to_thread(self._scan, pool_id)
        except OSError as exc:  # could not read the node directories: transient, never "nothing there"
            raise TemporaryProviderError(f"could not read the nodes of pool {pool_id}: {exc}") from exc

    async def list_nodes(self, pool_id: str) -> list[ProvisionedNode]:
        scanned = await self._scan_or_raise(pool_id)
        return [self._to_node(record) for _, record, alive in scanned if alive and record is not None]

    async def list_dead(self, pool_id: str) -> list[str]:
        """Node ids whose directory is left but whose agent is gone (deprovision them to clean up)."""
        scanned = await self._scan_or_raise(pool_id)
        busy = {node_id for pool, node_id in self._provisioning if pool == pool_id}
        return [node_id for node_id, _, alive in scanned if not alive and node_id not in busy]

    # ------------------------------------------------------------------ logs
    async def get_logs(self, node: NodeRef, tail: int = 100) -> list[str]:
        return await asyncio.to_thread(self._logs_sync, node, tail)

    def _logs_sync(self, node: NodeRef, tail: int) -> list[str]:
        node_dir = self._node_dir(node.pool_id, node.node_id)
        lines = [f"[agent] {line}" for line in procs.tail_lines(node_dir / AGENT_LOG, tail)]
        lines += [f"[engine] {line}" for line in procs.tail_lines(node_dir / ENGINE_LOG, tail)]
        return lines
