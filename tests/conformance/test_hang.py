"""An engine that hangs leaves the routing table and is replaced, on every provider that runs one, through
the real control plane (heartbeat interval 1 s). A hang is SIGSTOP of the engine process alone (the agent
keeps running); on Kubernetes, where the kubelet's readiness probe speaks for the engine, it is the pod
turning not ready and staying so. Prints the times (docs/PERFORMANCE.md records them)."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from controller.boot import ControlPlane
from controller.client import Client
from tests.conformance import providers as pv
from tests.support import controlplane as cpl

pytestmark = pytest.mark.integration


def _routes(api: Client, model: str) -> list[dict[str, Any]]:
    return list((api.routing_table() or {}).get("models", {}).get(model, []))


def _engine_pids(node_id: str) -> list[int]:
    pids = []
    for agent in pv._agents(node_id):
        try:
            pids += [c.pid for c in agent.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return pids


class Hang:
    """Makes a node's engine hang; `release()` lets whatever is left go."""

    def __init__(self) -> None:
        self.stopped: list[int] = []
        self.undo: list[Callable[[], None]] = []

    def sigstop(self, node_id: str) -> None:
        pids = cpl.wait_for(lambda: _engine_pids(node_id), 20, what="the engine process")
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            self.stopped.append(pid)
        assert pv._agents(node_id), "the agent keeps running"

    def release(self) -> None:
        for pid in self.stopped:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
        for undo in self.undo:
            undo()


@pytest.fixture()
def hang() -> Iterator[Hang]:
    h = Hang()
    try:
        yield h
    finally:
        h.release()


def _pool_and_model(api: Client, provider: str, request: pytest.FixtureRequest) -> tuple[dict[str, Any], str]:
    model = f"hang-{provider}-{uuid.uuid4().hex[:6]}"
    name = f"hang-{provider}-{uuid.uuid4().hex[:6]}"
    if provider == "local":
        api.register_model(**cpl.fake_model(model))
        return api.create_pool(name, provider="local", max_nodes=4), model
    if provider == "skypilot":
        api.register_model(**cpl.fake_model(model))
        cfg = {"infra": ["runpod"], "accelerators": ["A100"], "port_range": [50000, 59000]}
        return api.create_pool(name, provider="skypilot", max_nodes=4, provider_config=cfg), model
    if provider == "kubernetes":
        request.getfixturevalue("fake_kubelet")
        cluster = request.getfixturevalue("k8s_cluster")
        api.register_model(
            model, engine="custom", image="ghcr.io/example/fake-engine:1", args=["python", "e.py", "{port}"]
        )
        cfg = {"kubeconfig": str(cluster.kubeconfig), "namespace": f"hang-{uuid.uuid4().hex[:6]}"}
        cfg["unready_timeout_s"] = 3
        return api.create_pool(name, provider="kubernetes", max_nodes=4, provider_config=cfg), model
    raise AssertionError(provider)


@pytest.mark.parametrize("provider", ["local", "skypilot", "kubernetes"])
def test_a_hung_engine_leaves_the_table_and_is_replaced(
    control_plane: ControlPlane, api: Client, hang: Hang, provider: str, request: pytest.FixtureRequest
) -> None:
    pool, model = _pool_and_model(api, provider, request)
    dep = api.deploy(model, pool["name"], replicas=1)
    try:
        api.wait_deployment(dep["id"], timeout=90)
        [route] = cpl.wait_for(lambda: _routes(api, model), 30, what="a route")
        first = route["node_id"]
        t0 = time.monotonic()
        if provider == "kubernetes":
            from tests.support.fake_kubelet import READY, UNREADY

            kubelet = request.getfixturevalue("fake_kubelet")
            kubelet.set_mode(UNREADY, node_id=first)
            hang.undo.append(lambda: kubelet.set_mode(READY, node_id=first))
        else:
            hang.sigstop(first)
        cpl.wait_for(lambda: not any(r["node_id"] == first for r in _routes(api, model)), 30, what="out of the table")
        out_s = time.monotonic() - t0
        cpl.wait_for(lambda: [r for r in _routes(api, model) if r["node_id"] != first], 90, what="a replacement routed")
        replaced_s = time.monotonic() - t0
        cpl.wait_for(lambda: api.get_node(first)["state"] == "terminated", 60, what="the hung node terminated")
        print(f"\nFIGURES hang provider={provider} out_s={out_s:.1f} replaced_s={replaced_s:.1f}", file=sys.stderr)
    finally:
        api.delete_deployment(dep["id"])
        cpl.wait_for(lambda: not any(d["id"] == dep["id"] for d in api.list_deployments()), 180, what="deleted")
        api.delete_pool(pool["id"])
