"""The local provider end to end: real agent and fake-engine processes in a temp data dir."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from adapters.base import (
    NodeRef,
    PermanentProviderError,
    ProviderNodeStatus,
    ProvisionedNode,
    ProvisionRequest,
    TemporaryProviderError,
    WorkloadSpec,
)
from adapters.local import procs
from adapters.local.adapter import LocalAdapter
from adapters.local.gpu import detect_gpus
from adapters.registry import create_adapter

ROOT = Path(__file__).resolve().parents[2]
FAKE_ENGINE = ROOT / "tests" / "support" / "fake_engine.py"
POOL = "pool-a"
TOKEN = "node-token-integration-77"
KEY = "inference-key-integration-88"


class Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.beats: list[dict[str, Any]] = []
        self.auth: set[str] = set()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/inventory/heartbeat"

    def beats_of(self, node_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [b for b in self.beats if b["node_id"] == node_id]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        with self.server.lock:
            self.server.beats.append(body)
            self.server.auth.add(self.headers.get("Authorization", ""))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _kill_everything(data_dir: Path) -> None:
    """Stop every process group a node.json under data_dir records (test cleanup)."""
    for path in data_dir.glob("nodes/*/*/node.json"):
        record = procs.read_json(path)
        if record:
            procs.terminate_group(record.get("pid"), record.get("create_time"), grace_s=2.0)


@pytest.fixture
async def adapter(tmp_path: Path) -> AsyncIterator[LocalAdapter]:
    data_dir = tmp_path / "data"
    inst = LocalAdapter(POOL, {"port_range": [21000, 28999], "max_gpus": 0}, str(data_dir))
    try:
        yield inst
    finally:
        await inst.close()
        await asyncio.to_thread(_kill_everything, data_dir)


def request(receiver: Receiver, node_id: str, workload: WorkloadSpec | None) -> ProvisionRequest:
    return ProvisionRequest(
        node_id=node_id,
        pool_id=POOL,
        heartbeat_url=receiver.url,
        node_token=TOKEN,
        heartbeat_interval_s=0.5,
        workload=workload,
    )


def fake_workload(key: str | None = KEY, args: tuple[str, ...] | None = None) -> WorkloadSpec:
    argv = args or (sys.executable, str(FAKE_ENGINE), "--port", "{port}", "--model", "{model}")
    return WorkloadSpec(deployment_id="dep-1", model_name="tiny-echo", engine="custom", args=argv, inference_key=key)


async def wait_for(predicate: Callable[[], bool], timeout: float = 8.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def group_pids(pgid: int) -> list[int]:
    return [p.pid for p in procs.group_members(pgid)]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def node_dir(adapter: LocalAdapter, node_id: str) -> Path:
    return adapter.nodes_root / POOL / node_id


def ref(node: ProvisionedNode) -> NodeRef:
    return NodeRef(node.node_id, node.pool_id, node.provider_instance_id)


async def test_node_lifecycle(adapter: LocalAdapter, receiver: Receiver) -> None:
    node = await adapter.provision_node(request(receiver, "n1", fake_workload()))
    port = node.resources["port"]
    assert 21000 <= port <= 28999
    assert node.endpoint == f"http://127.0.0.1:{port}"
    assert node.provider_instance_id == "local-n1"
    assert node.ip_address == "127.0.0.1"
    assert node.deployment_id == "dep-1"
    assert node.resources["engine"] == "custom"
    assert node.vcpu >= 1 and node.ram_mb > 0

    # heartbeats reach the receiver with the node's token; the engine answers with the key
    await wait_for(lambda: any(b["state"] == "ready" for b in receiver.beats_of("n1")), what="ready")
    assert receiver.auth == {f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(timeout=5) as client:
        resp = await client.get(f"{node.endpoint}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        assert resp.status_code == 200
        assert resp.json()["data"][0]["id"] == "tiny-echo"
        assert (await client.get(f"{node.endpoint}/v1/models")).status_code == 401
        chat = await client.post(
            f"{node.endpoint}/v1/chat/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"model": "tiny-echo", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.json()["choices"][0]["message"]["content"] == "echo: hi"
        assert chat.json()["served_by"] == str(port)

    record = json.loads((node_dir(adapter, "n1") / "node.json").read_text())
    pid = record["pid"]
    assert record["port"] == port and record["provider_instance_id"] == "local-n1"
    assert record["create_time"] == procs.process_create_time(pid)
    members = group_pids(pid)
    assert pid in members and len(members) >= 2  # agent + engine
    assert psutil.Process(pid).ppid() != os.getpid()  # detached: survives the orchestrator

    # secrets: not in node.json, the logs or any command line
    texts = [(node_dir(adapter, "n1") / name).read_text(errors="replace") for name in ("node.json", "agent.log")]
    texts += [(node_dir(adapter, "n1") / "engine.log").read_text(errors="replace")]
    texts += [" ".join(psutil.Process(p).cmdline()) for p in members]
    for text in texts:
        assert TOKEN not in text and KEY not in text

    # idempotent provision, listing, adoption after a restart
    again = await adapter.provision_node(request(receiver, "n1", fake_workload()))
    assert again == node
    assert group_pids(pid) == members
    assert await adapter.list_nodes(POOL) == [node]
    restarted = LocalAdapter(POOL, {"port_range": [21000, 28999]}, adapter.data_dir)
    assert [n.node_id for n in await restarted.list_nodes(POOL)] == ["n1"]
    assert (await restarted.get_node_status(ref(node))).status == ProviderNodeStatus.RUNNING
    assert await restarted.list_dead(POOL) == []

    logs = await adapter.get_logs(ref(node), tail=50)
    assert any(line.startswith("[agent] ") for line in logs)
    assert any(line.startswith("[engine] ") for line in logs)

    # deprovision stops the whole group and is idempotent
    await restarted.deprovision_node(ref(node))
    assert not any(alive(p) for p in members)
    assert not node_dir(adapter, "n1").exists()
    await restarted.deprovision_node(ref(node))
    await adapter.deprovision_node(ref(node))
    status = await adapter.get_node_status(ref(node))
    assert status.status == ProviderNodeStatus.TERMINATED and status.reason == "not found"
    assert await adapter.list_nodes(POOL) == []


async def test_agent_killed_externally(adapter: LocalAdapter, receiver: Receiver) -> None:
    node = await adapter.provision_node(request(receiver, "n2", fake_workload(key=None)))
    await wait_for(lambda: any(b["state"] == "ready" for b in receiver.beats_of("n2")), what="ready")
    pid = node.resources["agent_pid"]
    engine = [p for p in group_pids(pid) if p != pid]
    assert engine
    os.kill(pid, signal.SIGKILL)
    await wait_for(lambda: not alive(pid), what="the agent to die")

    status = await adapter.get_node_status(ref(node))
    assert status.status == ProviderNodeStatus.TERMINATED
    assert status.reason == "agent process exited"
    assert await adapter.list_nodes(POOL) == []
    assert await adapter.list_dead(POOL) == ["n2"]

    # the orphaned engine still belongs to the node's process group: deprovision stops it
    assert any(alive(p) for p in engine)
    await adapter.deprovision_node(ref(node))
    assert not any(alive(p) for p in engine)
    assert await adapter.list_dead(POOL) == []


async def test_reprovision_after_death_starts_a_new_agent(adapter: LocalAdapter, receiver: Receiver) -> None:
    first = await adapter.provision_node(request(receiver, "n3", fake_workload(key=None)))
    old_pid = first.resources["agent_pid"]
    procs.terminate_group(old_pid, None, grace_s=3.0)
    second = await adapter.provision_node(request(receiver, "n3", fake_workload(key=None)))
    assert second.resources["agent_pid"] != old_pid
    assert (await adapter.get_node_status(ref(second))).status == ProviderNodeStatus.RUNNING
    await adapter.deprovision_node(ref(second))


async def test_engine_crash_fails_the_node(adapter: LocalAdapter, receiver: Receiver) -> None:
    crash = (sys.executable, "-c", "import sys; sys.exit(3)")
    node = await adapter.provision_node(request(receiver, "n4", fake_workload(key=None, args=crash)))
    await wait_for(lambda: any(b["state"] == "failed" for b in receiver.beats_of("n4")), what="failed")
    failed = next(b for b in receiver.beats_of("n4") if b["state"] == "failed")
    assert failed["reason"] == "engine exited with code 3"
    pid = node.resources["agent_pid"]
    await wait_for(lambda: not alive(pid), what="the agent to exit")
    status = await adapter.get_node_status(ref(node))
    assert status.status == ProviderNodeStatus.TERMINATED
    await adapter.deprovision_node(ref(node))


async def test_idle_node(adapter: LocalAdapter, receiver: Receiver) -> None:
    node = await adapter.provision_node(request(receiver, "idle", None))
    assert node.endpoint is None and node.deployment_id is None
    await wait_for(lambda: len(receiver.beats_of("idle")) >= 1, what="a heartbeat")
    beat = receiver.beats_of("idle")[0]
    assert beat["state"] == "ready" and beat["endpoint"] is None
    assert (await adapter.get_node_status(ref(node))).status == ProviderNodeStatus.RUNNING
    await adapter.deprovision_node(ref(node))
    assert (await adapter.get_node_status(ref(node))).status == ProviderNodeStatus.TERMINATED


async def test_provision_errors_are_permanent(adapter: LocalAdapter, receiver: Receiver) -> None:
    gpu_workload = WorkloadSpec(deployment_id="d", model_name="m", engine="custom", args=("srv",), gpus=1)
    with pytest.raises(PermanentProviderError, match="this machine has 0 GPUs; the deployment asks for 1"):
        await adapter.provision_node(request(receiver, "g", gpu_workload))
    with pytest.raises(PermanentProviderError, match="unknown engine"):
        await adapter.provision_node(request(receiver, "u", WorkloadSpec("d", "m", engine="nope")))
    with pytest.raises(PermanentProviderError, match="node id"):
        await adapter.provision_node(request(receiver, "../escape", None))
    assert await adapter.list_nodes(POOL) == []


async def test_discover_resources_and_registry(tmp_path: Path) -> None:
    inst = create_adapter("local", POOL, {}, str(tmp_path))
    assert isinstance(inst, LocalAdapter)
    assert inst.capabilities.ephemeral is False and inst.capabilities.container_native is False
    offers = await inst.discover_resources()
    assert len(offers) == 1
    offer = offers[0]
    assert offer.provider == "local" and offer.region == "local"
    assert offer.vcpu == os.cpu_count()
    assert offer.ram_mb > 0 and offer.price_per_hour == 0 and offer.available == 1
    assert offer.gpu_count == len(detect_gpus())


async def test_status_of_unknown_node(adapter: LocalAdapter) -> None:
    status = await adapter.get_node_status(NodeRef("nothing", POOL))
    assert status.status == ProviderNodeStatus.TERMINATED and status.reason == "not found"
    assert await adapter.get_logs(NodeRef("nothing", POOL)) == []
    await adapter.deprovision_node(NodeRef("nothing", POOL))


async def test_gpus_are_pinned_per_node(tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a (simulated) 2-GPU machine each node gets its own GPU via CUDA_VISIBLE_DEVICES; a third waits."""
    from adapters.local import adapter as adapter_mod
    from adapters.local.gpu import GpuInfo

    fake = [GpuInfo(0, "NVIDIA H100", 81559), GpuInfo(1, "NVIDIA H100", 81559)]
    monkeypatch.setattr(adapter_mod, "detect_gpus", lambda: fake)
    data_dir = tmp_path / "gpu"
    inst = LocalAdapter(POOL, {"port_range": [21000, 28999]}, str(data_dir))
    try:
        wl = dataclasses.replace(fake_workload(key=None), gpus=1)
        a = await inst.provision_node(request(receiver, "g1", wl))
        b = await inst.provision_node(request(receiver, "g2", wl))
        records = [json.loads((node_dir(inst, n) / "node.json").read_text()) for n in ("g1", "g2")]
        assert sorted(i for r in records for i in r["gpu_indices"]) == [0, 1]
        assert a.gpu_type == "NVIDIA H100" and a.gpu_count == 1
        # the engine really runs with its own device list
        _, engine_env = await asyncio.to_thread(_engine_env, a.resources["agent_pid"])
        assert engine_env.get("CUDA_VISIBLE_DEVICES") == str(records[0]["gpu_indices"][0])
        with pytest.raises(TemporaryProviderError, match="GPUs are held by other nodes"):
            await inst.provision_node(request(receiver, "g3", wl))
        await inst.deprovision_node(ref(b))  # frees GPU 1
        c = await inst.provision_node(request(receiver, "g3", wl))
        assert json.loads((node_dir(inst, "g3") / "node.json").read_text())["gpu_indices"] == records[1]["gpu_indices"]
        await inst.deprovision_node(ref(c))
        await inst.deprovision_node(ref(a))
    finally:
        await inst.close()
        await asyncio.to_thread(_kill_everything, data_dir)


def _engine_env(agent_pid: int) -> tuple[int, dict[str, str]]:
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        kids = psutil.Process(agent_pid).children()
        if kids:
            return kids[0].pid, kids[0].environ()
        time.sleep(0.05)
    raise AssertionError("the engine did not start")
