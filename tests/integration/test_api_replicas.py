"""Several API replicas (issue 15): `inferia-orch up` with INFERIA_API_REPLICAS=2, both replicas listening on the
one data port (SO_REUSEPORT). Under a stream of heartbeats, routing reads and proxied chat completions, one
replica's process is SIGKILLed: the other keeps serving all three, no heartbeat that was answered 200 is lost
(the inventory holds each node's newest answered beat or a newer one), no idempotent read fails (the client
fails over: a new connection to the shared port, else the next address), and Serve starts a replacement that
binds the same port beside the survivor.

`up` runs in its own process (one Ray per process: the session fixture's control plane cannot be used); the
nodes are registered straight into its inventory with tokens the test knows (tests/support/inventory_probe.py),
one of them routed to a fast engine (tests/support/fast_engine.py) for the proxy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from actors.records import hash_secret
from controller.client import Client, InferiaError
from controller.services import free_port
from tests.support.controlplane import wait_for
from tests.support.crash import ControlPlaneProcess, actor_processes
from tests.support.inventory_probe import probe

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "tests" / "support" / "fast_engine.py"
REPLICA_ACTOR = "ServeReplica:inferia:inferia-api"
MODEL = "replicas-m"
NODES = 6


@pytest.fixture()
def cp_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    cp = ControlPlaneProcess(tmp_path_factory.mktemp("replicas"))
    cp.env["INFERIA_API_REPLICAS"] = "2"
    cp.env["INFERIA_DIRECT_INGRESS"] = "true"
    try:
        yield cp
    finally:
        cp.kill_everything()


@pytest.fixture()
def engine_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ENGINE), "--port", str(port), "--model", MODEL],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url + "/health"), 30, what="the fast engine")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def replica_pids(cp: ControlPlaneProcess) -> list[int]:
    return sorted(actor_processes(cp.processes(), REPLICA_ACTOR))


@dataclass
class Stream:
    """Threads that each beat for their nodes (increasing seq, carried in cpu_percent too), read the routing
    table and (thread 0) send a chat completion through the proxy, until stopped."""

    urls: list[str]
    admin_token: str
    nodes: dict[str, str]  # node id -> token
    start_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    answered: dict[str, int] = field(default_factory=dict)  # node -> highest seq answered 200
    beats_ok: int = 0
    beats_failed: list[str] = field(default_factory=list)  # not answered: allowed (an agent beats again)
    reads_ok: int = 0
    read_failures: list[str] = field(default_factory=list)
    chats: list[tuple[float, bool]] = field(default_factory=list)  # (when, answered 200)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, i: int, node_id: str) -> None:
        seq = 0
        with Client(self.urls, token=self.admin_token, timeout=10) as c:
            while not self.stop.is_set():
                seq += 1
                try:
                    fields = {"node_id": node_id, "state": "ready", "seq": seq, "start_id": self.start_id}
                    c.heartbeat(self.nodes[node_id], **fields, cpu_percent=float(seq))
                    with self.lock:
                        self.answered[node_id] = seq
                        self.beats_ok += 1
                except InferiaError as exc:
                    with self.lock:
                        self.beats_failed.append(f"{node_id}#{seq}: {exc!r}")
                try:
                    c.routing_table()
                    with self.lock:
                        self.reads_ok += 1
                except InferiaError as exc:
                    with self.lock:
                        self.read_failures.append(repr(exc))
                if i == 0:
                    ok = True
                    try:
                        c.chat(MODEL, [{"role": "user", "content": "hi"}], max_tokens=2)
                    except InferiaError:
                        ok = False
                    with self.lock:
                        self.chats.append((time.monotonic(), ok))
                time.sleep(0.01)

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.run, args=(i, nid), daemon=True) for i, nid in enumerate(self.nodes)]
        for t in threads:
            t.start()
        return threads


def served_by_both(replicas: list[int], data_url: str, admin_token: str, nodes: dict[str, str]) -> None:
    """32 connections to the shared data port, each carrying a heartbeat, a routing read and a chat completion
    and then held open: each replica holds some of them (the kernel spreads connections; all 32 on one of
    two replicas: 2^-31), so both served all three."""
    port = int(data_url.rsplit(":", 1)[1])
    conns = [httpx.Client(base_url=data_url, timeout=30, trust_env=False) for _ in range(32)]
    try:
        for k, h in enumerate(conns):
            nid = list(nodes)[k % len(nodes)]
            beat = h.post("/inventory/heartbeat", json={"node_id": nid, "state": "ready"}, headers=_bearer(nodes[nid]))
            assert beat.status_code == 200, beat.text
            assert h.get("/v1/routing-table", headers=_bearer(admin_token)).status_code == 200

        def routed() -> bool:
            table = conns[0].get("/v1/routing-table", headers=_bearer(admin_token)).json()
            return bool(table["models"].get(MODEL))

        wait_for(routed, 30, what="node 0 routed")  # once its first ready beat is in
        time.sleep(0.5)  # every replica's routing cache follows by long-poll
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        for h in conns:
            chat = h.post("/v1/chat/completions", json=body, headers=_bearer(admin_token))
            assert chat.status_code == 200, chat.text
        held = {pid: _established(pid, port) for pid in replicas}
        assert all(n > 0 for n in held.values()), f"connections held per replica: {held}"
    finally:
        for h in conns:
            h.close()


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _established(pid: int, port: int) -> int:
    conns = psutil.Process(pid).net_connections(kind="tcp")
    return sum(1 for c in conns if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)


def test_two_api_replicas_one_killed_under_load(cp_proc: ControlPlaneProcess, engine_url: str) -> None:
    cp_proc.start()
    runtime = json.loads((cp_proc.data_dir / "runtime.json").read_text())
    data_url, ray_address = runtime["data_url"], runtime["ray_address"]
    assert data_url != cp_proc.url, "the replicas serve their own data port"
    replicas = wait_for(lambda: (p := replica_pids(cp_proc)) and len(p) == 2 and p, 60, what="2 API replicas")
    admin_token = (cp_proc.data_dir / "api_token").read_text().strip()

    with cp_proc.client() as admin:
        pool = admin.create_pool("replicas")
    nodes = {f"rep-node-{i}": f"tok-{uuid.uuid4().hex}" for i in range(NODES)}
    infos = []
    for i, (nid, tok) in enumerate(nodes.items()):
        info = {"id": nid, "pool_id": pool["id"], "provider": "bench", "token_hash": hash_secret(tok)}
        if i == 0:  # routed once its first ready beat arrives: the proxy's upstream
            info |= {"state": "provisioning", "deployment_id": "dep-replicas", "model_name": MODEL}
            info["endpoint"] = engine_url
        else:
            info["state"] = "ready"
        infos.append(info)
    probe("register", ray_address, infos)
    served_by_both(replicas, data_url, admin_token, nodes)

    # the data port first, Serve's proxy port second (the client fails over along them)
    stream = Stream([data_url, cp_proc.url], admin_token, nodes)
    threads = stream.start()
    try:
        wait_for(lambda: any(ok for _, ok in stream.chats), 30, what="a proxied chat completion")
        time.sleep(2.0)
        before = (stream.beats_ok, stream.reads_ok)

        victim, survivor = replicas
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(4.0)
        after = (stream.beats_ok, stream.reads_ok)
        assert psutil.pid_exists(survivor), "the other replica kept running"
        assert after[0] - before[0] > 50 and after[1] - before[1] > 50, (before, after)
        late_chats = [ok for t, ok in stream.chats if t > killed_at + 1.0]
        assert late_chats and all(late_chats), f"the proxy kept serving: {late_chats[-20:]}"

        # no answered heartbeat lost: each node's newest applied beat (the inventory ignores older ones) is at
        # least its newest answered one (read while the stream goes on: applied beats only grow)
        with stream.lock:
            answered = dict(stream.answered)
        seen = probe("read", ray_address, list(nodes))
        for nid, seq in answered.items():
            applied = (seen[nid] or {}).get("metrics", {}).get("cpu_percent")
            assert applied is not None and applied >= seq, (nid, seq, seen[nid])
        assert seen["rep-node-0"]["state"] == "ready"

        # Serve replaces the killed replica: it binds the data port beside the survivor
        wait_for(lambda: len(p := replica_pids(cp_proc)) == 2 and victim not in p, 90, what="a replacement")
        for _ in range(20):
            with httpx.Client(timeout=10, trust_env=False) as fresh:  # new connections, spread by the kernel
                assert fresh.get(data_url + "/healthz").status_code == 200
        with Client(data_url, token=admin_token, timeout=10) as c:
            assert c.routing_table()["models"][MODEL]
    finally:
        stream.stop.set()
        for t in threads:
            t.join(30)
    assert stream.read_failures == [], stream.read_failures[:5]
    print(
        f"\nAPI replicas: {stream.beats_ok} beats answered ({len(stream.beats_failed)} not answered), "
        f"{stream.reads_ok} routing reads, {sum(ok for _, ok in stream.chats)}/{len(stream.chats)} chats ok"
    )
