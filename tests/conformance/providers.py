"""One harness per adapter for the conformance suite: how to make the adapter for a pool, what a node runs,
and how a test reads provider truth behind the adapter's back (processes, API objects, sidecar jobs).

A new adapter gets the whole suite by adding a harness here and its name to `HARNESSES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import psutil

from adapters.base import (
    NodeRef,
    ProviderAdapter,
    ProvisionRequest,
    TemporaryProviderError,
    WorkloadSpec,
)

ROOT = Path(__file__).resolve().parents[2]
FAKE_ENGINE = str(ROOT / "tests" / "support" / "fake_engine.py")
HEARTBEAT_URL = "http://127.0.0.1:9/inventory/heartbeat"  # nothing listens: the agents just retry

# values the control plane's own secrets have in these tests (exported before any adapter starts a node)
SECRETS = {
    "INFERIA_API_TOKEN": "it_conformance_admin_token_0123456789",
    "POSTGRES_DSN": "postgresql://inferia:pg-conformance-secret@127.0.0.1:5432/inferia",
    "REDIS_PASSWORD": "redis-conformance-secret-42",
    "NOSANA_INTERNAL_API_KEY": "nosana-conformance-secret-4242",
}


def new_node_id() -> str:
    return f"node-{uuid.uuid4().hex[:12]}"


def new_pool_id() -> str:
    return f"pool-{uuid.uuid4().hex[:12]}"


def fake_engine_workload(image: str | None = None, key: str = "ik_conformance_key") -> WorkloadSpec:
    args = ("python", "fake_engine.py") if image else (sys.executable, FAKE_ENGINE)
    return WorkloadSpec(
        deployment_id="dep-conformance",
        model_name="conf-model",
        engine="custom",
        image=image,
        args=(*args, "--port", "{port}", "--model", "{model}"),
        port=8000 if image else None,
        inference_key=key,
    )


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _agents(node_id: str) -> list[psutil.Process]:
    """Live node-agent processes of a node (any provider that runs the real agent as a process)."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            cmd = p.info.get("cmdline") or []
            if p.info.get("status") == psutil.STATUS_ZOMBIE:
                continue
            if "--node-id" in cmd and cmd[cmd.index("--node-id") + 1 : cmd.index("--node-id") + 2] == [node_id]:
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            continue
    return out


def _process_envs(node_id: str) -> dict[str, list[dict[str, str]]]:
    agents = _agents(node_id)
    engines = []
    for a in agents:
        with contextlib.suppress(psutil.NoSuchProcess):
            engines += [_environ(c.pid) for c in a.children(recursive=True)]
    return {"agent": [_environ(a.pid) for a in agents], "engine": engines}


class Harness:
    name: ClassVar[str]
    runs_processes: ClassVar[bool] = False  # the real agent and engine run as processes on this machine

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.adapters: list[ProviderAdapter] = []

    # ------------------------------------------------------------ to implement
    def make(self, pool_id: str) -> ProviderAdapter:
        raise NotImplementedError

    def workload(self) -> WorkloadSpec:
        return fake_engine_workload()

    async def instances(self, pool_id: str) -> set[str]:
        """Node ids that exist at the provider for the pool, read behind the adapter's back."""
        raise NotImplementedError

    async def objects(self, pool_id: str) -> list[tuple[str, str | None, str | None]]:
        """(what, pool, node) for every object the provider created for the pool."""
        raise NotImplementedError

    async def crash_halfway(self, adapter: ProviderAdapter, req: ProvisionRequest) -> None:
        """Start a provision and "crash" in the middle: part of the node exists, the caller got no answer."""
        raise NotImplementedError

    def transient(self, adapter: ProviderAdapter) -> contextlib.AbstractAsyncContextManager[None]:
        """While inside: the provider cannot be reached (a transient error)."""
        raise NotImplementedError

    async def engine_envs(self, pool_id: str, node_id: str) -> dict[str, list[dict[str, str]]]:
        """{"agent": [env...], "engine": [env...]}: the environments a node's processes/containers get."""
        raise NotImplementedError

    async def settle(self, pool_id: str, node_id: str) -> None:
        """Wait until a provisioned node's processes/objects are all there (default: nothing to wait for)."""

    # ------------------------------------------------------------ shared
    def adapter(self, pool_id: str) -> ProviderAdapter:
        a = self.make(pool_id)
        self.adapters.append(a)
        return a

    def request(self, pool_id: str, node_id: str) -> ProvisionRequest:
        return ProvisionRequest(node_id, pool_id, HEARTBEAT_URL, f"nt_{node_id}_token", 1.0, workload=self.workload())

    async def close(self) -> None:
        for a in self.adapters:
            for n in await _quiet_list(a):
                with contextlib.suppress(Exception):
                    await a.deprovision_node(NodeRef(n.node_id, a.pool_id, n.provider_instance_id))
            await a.close()


async def _quiet_list(a: ProviderAdapter) -> list[Any]:
    try:
        return await a.list_nodes(a.pool_id)
    except Exception:
        return []


async def wait_until(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = await cond() if asyncio.iscoroutinefunction(cond) else cond()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


# ---------------------------------------------------------------------------------------------- local
class LocalHarness(Harness):
    name = "local"
    runs_processes = True

    def make(self, pool_id: str) -> ProviderAdapter:
        from adapters.local.adapter import LocalAdapter

        return LocalAdapter(pool_id, {"port_range": [31000, 39000]}, str(self.tmp))

    def _records(self, pool_id: str) -> list[dict[str, Any]]:
        from adapters.local import procs

        out = []
        for f in (self.tmp / "nodes" / pool_id).glob("*/node.json"):
            rec = procs.read_json(f)
            if rec:
                out.append(rec)
        return out

    async def instances(self, pool_id: str) -> set[str]:
        found = {r["node_id"] for r in self._records(pool_id) if psutil.pid_exists(int(r["pid"]))}
        pool_dir = self.tmp / "nodes" / pool_id
        for d in pool_dir.iterdir() if pool_dir.is_dir() else []:
            if _agents(d.name):  # a live agent counts even without its record (a crash between the two)
                found.add(d.name)
        return found

    async def objects(self, pool_id: str) -> list[tuple[str, str | None, str | None]]:
        return [("node.json", r.get("pool_id"), r.get("node_id")) for r in self._records(pool_id)]

    async def crash_halfway(self, adapter: ProviderAdapter, req: ProvisionRequest) -> None:
        """The agent is started, then the provisioning process dies before it records the node."""
        from adapters.local import procs

        real = procs.write_json_atomic

        def die(*args: Any, **kwargs: Any) -> None:
            raise SystemExit("crashed between starting the agent and recording it")

        procs.write_json_atomic = die  # type: ignore[assignment]
        try:
            with contextlib.suppress(SystemExit):
                await adapter.provision_node(req)
        finally:
            procs.write_json_atomic = real  # type: ignore[assignment]
        assert _agents(req.node_id), "the crashed try should have left its agent running"

    @contextlib.asynccontextmanager
    async def transient(self, adapter: ProviderAdapter) -> AsyncIterator[None]:
        from adapters.local import procs

        real = procs.read_json

        def unreadable(path: Any) -> None:
            raise PermissionError(13, "Permission denied", str(path))

        procs.read_json = unreadable  # type: ignore[assignment]
        try:
            yield
        finally:
            procs.read_json = real  # type: ignore[assignment]

    async def engine_envs(self, pool_id: str, node_id: str) -> dict[str, list[dict[str, str]]]:
        return _process_envs(node_id)

    async def settle(self, pool_id: str, node_id: str) -> None:
        await wait_until(lambda: all(_process_envs(node_id).values()), 20, "agent and engine processes")


# ---------------------------------------------------------------------------------------------- instant
class InstantHarness(Harness):
    name = "instant"

    def make(self, pool_id: str, **config: Any) -> ProviderAdapter:
        from tests.support.instant import InstantAdapter

        return InstantAdapter(pool_id, config, str(self.tmp))

    async def instances(self, pool_id: str) -> set[str]:
        from tests.support import instant

        return set(instant.instances(self.tmp, pool_id))

    async def objects(self, pool_id: str) -> list[tuple[str, str | None, str | None]]:
        from tests.support import instant

        return [("instance", r.get("pool_id"), r.get("node_id")) for r in instant.instances(self.tmp, pool_id).values()]

    async def crash_halfway(self, adapter: ProviderAdapter, req: ProvisionRequest) -> None:
        lossy = self.make(req.pool_id, faults={"provision": ["lost_reply"]})
        try:
            await lossy.provision_node(req)
        except TemporaryProviderError:
            pass
        else:
            raise AssertionError("the lost reply should have raised")

    @contextlib.asynccontextmanager
    async def transient(self, adapter: ProviderAdapter) -> AsyncIterator[None]:
        faults = adapter.config["faults"]
        adapter.config["faults"] = {"status": ["503*"], "list": ["503*"]}
        try:
            yield
        finally:
            adapter.config["faults"] = faults

    async def engine_envs(self, pool_id: str, node_id: str) -> dict[str, list[dict[str, str]]]:
        from tests.support import instant

        rec = instant.instances(self.tmp, pool_id).get(node_id) or {}
        return {"agent": [], "engine": [{k: str(v) for k, v in rec.items()}]}  # all it keeps of a node


# ---------------------------------------------------------------------------------------------- skypilot
class SkyPilotHarness(Harness):
    name = "skypilot"
    runs_processes = True

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        from tests.support import skypilot_catalog

        skypilot_catalog.install()

    def make(self, pool_id: str) -> ProviderAdapter:
        from adapters.skypilot.adapter import SkyPilotAdapter
        from tests.support.skypilot_fake import FakeSkyClient

        cfg = {"infra": ["runpod"], "accelerators": ["A100"], "port_range": [40000, 49000]}
        return SkyPilotAdapter(pool_id, cfg, str(self.tmp), client=FakeSkyClient(data_dir=str(self.tmp)))

    @property
    def root(self) -> Path:
        from tests.support.skypilot_fake import fake_root

        return fake_root(str(self.tmp))

    def _clusters(self, pool_id: str) -> dict[str, dict[str, Any]]:
        from adapters.skypilot.config import CLUSTER_PREFIX
        from adapters.skypilot.task import pool_prefix

        head = pool_prefix(CLUSTER_PREFIX, pool_id)
        out = {}
        for f in self.root.glob(f"{head}*/cluster.json"):
            with contextlib.suppress(OSError, ValueError):
                out[f.parent.name] = json.loads(f.read_text())
        return out

    async def instances(self, pool_id: str) -> set[str]:
        from adapters.skypilot.config import CLUSTER_PREFIX
        from adapters.skypilot.task import node_id_of

        return {n for name in self._clusters(pool_id) if (n := node_id_of(CLUSTER_PREFIX, pool_id, name))}

    async def objects(self, pool_id: str) -> list[tuple[str, str | None, str | None]]:
        """A cluster carries its pool in its name, its node id in its name and in the task's environment."""
        from adapters.skypilot.config import CLUSTER_PREFIX
        from adapters.skypilot.task import node_id_of

        out: list[tuple[str, str | None, str | None]] = []
        for name in self._clusters(pool_id):
            node_id = node_id_of(CLUSTER_PREFIX, pool_id, name)
            out.append((f"cluster {name}", pool_id if node_id else None, node_id))
            for a in _agents(node_id or "-"):
                env = _environ(a.pid)
                out.append((f"agent of {name}", env.get("INFERIA_POOL_ID"), env.get("INFERIA_NODE_ID")))
        return out

    async def crash_halfway(self, adapter: ProviderAdapter, req: ProvisionRequest) -> None:
        """The cluster is launched, then the provisioning actor dies before the agent is started."""
        from sky import exceptions as sx

        client = adapter.client  # type: ignore[attr-defined]

        async def lost(*args: Any, **kwargs: Any) -> str:
            raise sx.ApiServerConnectionError("http://127.0.0.1:46580")

        client.exec = lost
        with contextlib.suppress(Exception):
            await adapter.provision_node(req)
        assert await self.instances(req.pool_id) == {req.node_id} and not _agents(req.node_id)

    @contextlib.asynccontextmanager
    async def transient(self, adapter: ProviderAdapter) -> AsyncIterator[None]:
        from sky import exceptions as sx

        client = adapter.client  # type: ignore[attr-defined]
        real = client.status

        async def down(*args: Any, **kwargs: Any) -> Any:
            raise sx.ApiServerConnectionError("http://127.0.0.1:46580")

        client.status = down
        try:
            yield
        finally:
            client.status = real

    async def engine_envs(self, pool_id: str, node_id: str) -> dict[str, list[dict[str, str]]]:
        return _process_envs(node_id)

    async def settle(self, pool_id: str, node_id: str) -> None:
        await wait_until(lambda: all(_process_envs(node_id).values()), 30, "agent and engine processes")

    async def close(self) -> None:
        from tests.support.skypilot_fake import stop_all

        await super().close()
        stop_all(self.root)


# ---------------------------------------------------------------------------------------------- kubernetes
class KubernetesHarness(Harness):
    name = "kubernetes"

    def __init__(self, tmp: Path, cluster: Any) -> None:
        super().__init__(tmp)
        from tests.support.k8s_cluster import kubeconfig_text
        from tests.support.tcp_proxy import TcpProxy

        self.cluster = cluster
        self.ns = f"c-{uuid.uuid4().hex[:8]}"
        self.proxy = TcpProxy("127.0.0.1", cluster.port)  # the adapter reaches the API through it
        self.kubeconfig = tmp / "proxied.kubeconfig"
        self.kubeconfig.write_text(kubeconfig_text(f"https://127.0.0.1:{self.proxy.port}", cluster.admin_token))

    def make(self, pool_id: str) -> ProviderAdapter:
        from adapters.kubernetes.adapter import KubernetesAdapter

        cfg = {"kubeconfig": str(self.kubeconfig), "namespace": self.ns, "request_timeout_s": 3}
        return KubernetesAdapter(pool_id, cfg)

    def workload(self) -> WorkloadSpec:
        return fake_engine_workload(image="ghcr.io/example/fake-engine:1")

    def _lists(self) -> dict[str, list[Any]]:
        from kubernetes import client as k8s

        api = self.cluster.api_client()
        core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
        return {
            "deployment": apps.list_namespaced_deployment(self.ns).items,
            "service": core.list_namespaced_service(self.ns).items,
            "secret": [s for s in core.list_namespaced_secret(self.ns).items if s.type == "Opaque"],
            "pod": core.list_namespaced_pod(self.ns).items,
        }

    async def instances(self, pool_id: str) -> set[str]:
        lists = await asyncio.to_thread(self._lists)
        return {
            str((o.metadata.labels or {}).get("inferia.node"))
            for kind in ("deployment", "service", "secret")
            for o in lists[kind]
            if (o.metadata.labels or {}).get("inferia.pool") == pool_id and o.metadata.deletion_timestamp is None
        }

    async def objects(self, pool_id: str) -> list[tuple[str, str | None, str | None]]:
        lists = await asyncio.to_thread(self._lists)
        out = []
        for kind, items in lists.items():
            for o in items:
                lab = o.metadata.labels or {}
                if lab.get("inferia.pool") == pool_id or lab.get("inferia.pool") is None:
                    out.append((f"{kind} {o.metadata.name}", lab.get("inferia.pool"), lab.get("inferia.node")))
        return out

    async def crash_halfway(self, adapter: ProviderAdapter, req: ProvisionRequest) -> None:
        """The Secret and Service are created, then the provisioning actor dies before the Deployment."""
        c = await adapter.kube()  # type: ignore[attr-defined]
        real = c.apps.create_namespaced_deployment

        def died(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionResetError("the provisioning actor died here")

        c.apps.create_namespaced_deployment = died
        try:
            with contextlib.suppress(Exception):
                await adapter.provision_node(req)
        finally:
            c.apps.create_namespaced_deployment = real
        lists = await asyncio.to_thread(self._lists)
        assert lists["service"] and not lists["deployment"], "the crash should have left a Service only"

    @contextlib.asynccontextmanager
    async def transient(self, adapter: ProviderAdapter) -> AsyncIterator[None]:
        self.proxy.cut()
        try:
            yield
        finally:
            self.proxy.restore()

    async def engine_envs(self, pool_id: str, node_id: str) -> dict[str, list[dict[str, str]]]:
        lists = await asyncio.to_thread(self._lists)
        envs = []
        for d in lists["deployment"]:
            for c in d.spec.template.spec.containers:
                assert not c.env_from, "no envFrom: only the variables the adapter names"
                envs.append({e.name: e.value or f"<from {e.value_from.secret_key_ref.name}>" for e in c.env or []})
        return {"agent": [], "engine": envs}

    async def close(self) -> None:
        self.proxy.restore()
        await super().close()
        self.proxy.close()


# ---------------------------------------------------------------------------------------------- nosana
class NosanaHarness(Harness):
    name = "nosana"

    def __init__(self, tmp: Path, sim: Any) -> None:
        super().__init__(tmp)
        from tests.support.tcp_proxy import TcpProxy

        self.sim = sim
        _, _, port = sim.url.rpartition(":")
        self.proxy = TcpProxy("127.0.0.1", int(port))
        self.definitions: dict[str, dict[str, Any]] = {}  # node id -> the job definition pinned to IPFS

    def make(self, pool_id: str) -> ProviderAdapter:
        from adapters.nosana.adapter import NosanaAdapter
        from tests.support.nosana_sim import MARKET

        cfg = {
            "sidecar_url": f"http://127.0.0.1:{self.proxy.port}",
            "internal_api_key": self.sim.key,
            "market": MARKET,
            "request_timeout_s": 2,
            "retries": 0,
        }
        a = NosanaAdapter(pool_id, cfg)
        real = a.client.request

        async def seen(method: str, path: str, **kw: Any) -> Any:
            body = kw.get("json")
            if method == "POST" and path == "/jobs/launch" and isinstance(body, dict):
                self.definitions[body["node_id"]] = body["job_definition"]
            return await real(method, path, **kw)

        a.client.request = seen  # type: ignore[method-assign]
        return a

    def workload(self) -> WorkloadSpec:
        return fake_engine_workload(image="ghcr.io/example/fake-engine:1")

    def _jobs(self, pool_id: str) -> list[dict[str, Any]]:
        r = self.sim.http.get("/jobs", params={"pool_id": pool_id, "active": "1"})
        r.raise_for_status()
        return list(r.json().get("jobs") or [])

    async def instances(self, pool_id: str) -> set[str]:
        return {j["node_id"] for j in await asyncio.to_thread(self._jobs, pool_id)}

    async def objects(self, pool_id: str) -> list[tuple[str, str | None, str | None]]:
        jobs = await asyncio.to_thread(self._jobs, pool_id)
        return [(f"job {j.get('job_id')}", j.get("pool_id"), j.get("node_id")) for j in jobs]

    async def crash_halfway(self, adapter: ProviderAdapter, req: ProvisionRequest) -> None:
        """The sidecar posts the job, then the provisioning actor dies before it reads the answer."""
        client = adapter.client  # type: ignore[attr-defined]
        real = client.request

        async def dies_after_launch(method: str, path: str, **kw: Any) -> Any:
            out = await real(method, path, **kw)
            if path == "/jobs/launch":
                raise asyncio.CancelledError("the provisioning actor died here")
            return out

        client.request = dies_after_launch
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await adapter.provision_node(req)
        finally:
            client.request = real
        assert await self.instances(req.pool_id) == {req.node_id}

    @contextlib.asynccontextmanager
    async def transient(self, adapter: ProviderAdapter) -> AsyncIterator[None]:
        self.proxy.cut()
        try:
            yield
        finally:
            self.proxy.restore()

    async def engine_envs(self, pool_id: str, node_id: str) -> dict[str, list[dict[str, str]]]:
        definition = self.definitions.get(node_id) or {}
        envs = [dict(op.get("args", {}).get("env") or {}) for op in definition.get("ops", [])]
        return {"agent": [], "engine": envs or [{}]}

    async def close(self) -> None:
        self.proxy.restore()
        await super().close()
        self.proxy.close()


HARNESSES = ("local", "instant", "skypilot", "kubernetes", "nosana")


def secret_values() -> list[str]:
    return list(SECRETS.values())


def holds_secret(env: dict[str, str]) -> list[str]:
    """Names of the variables of `env` whose value holds a control-plane secret."""
    return sorted(k for k, v in env.items() if any(s in v for s in secret_values()))


def export_secrets(mp: Any) -> None:
    for k, v in SECRETS.items():
        mp.setenv(k, v)
    assert all(os.environ[k] == v for k, v in SECRETS.items())
