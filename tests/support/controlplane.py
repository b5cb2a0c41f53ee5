"""Run a real control plane (embedded Postgres + Redis, local Ray, actors, Serve) inside the test process."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from controller.boot import ControlPlane
from controller.client import Client
from controller.config import Settings
from controller.services import free_port

ROOT = Path(__file__).resolve().parents[2]
FAKE_ENGINE = str(ROOT / "tests" / "support" / "fake_engine.py")


def settings_for(data_dir: Path, port: int, interval_s: float = 1.0) -> Settings:
    return Settings(  # type: ignore[call-arg]
        INFERIA_DATA_DIR=str(data_dir),
        INFERIA_API_PORT=port,
        INFERIA_DATA_PORT=free_port(),
        INFERIA_HEARTBEAT_INTERVAL_S=interval_s,
        INFERIA_HEARTBEAT_MISSES=3,
        INFERIA_API_TOKEN=None,
        INFERIA_LOG_LEVEL="INFO",
        INFERIA_DASHBOARD=os.environ.get("INFERIA_DASHBOARD", "false"),  # tests and benches: no Ray dashboard
    )


def start(data_dir: Path, port: int | None = None, interval_s: float = 1.0) -> ControlPlane:
    cp = ControlPlane(settings_for(data_dir, port or free_port(), interval_s), keep_nodes=False)
    cp.start()
    return cp


def client(cp: ControlPlane) -> Client:
    return Client(cp.api_url, token=cp.api_token, timeout=60)


def fake_model(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "engine": "custom",
        "args": [sys.executable, FAKE_ENGINE, "--port", "{port}", "--model", "{model}"],
    }


def wait_for(cond: Callable[[], Any], timeout: float, every: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def node_pids(data_dir: Path, node_id: str) -> tuple[int | None, list[int]]:
    """(agent pid, engine pids) of a local node, from its node.json."""
    import json

    for f in (data_dir / "nodes").glob(f"*/{node_id}/node.json"):
        info = json.loads(f.read_text())
        pid = int(info["pid"]) if info.get("pid") else None
        if pid is None or not psutil.pid_exists(pid):
            return pid, []
        try:
            kids = [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            kids = []
        return pid, kids
    return None, []


def processes_under(data_dir: Path) -> list[int]:
    """Every live process whose command line or cwd points into data_dir/nodes (agents and engines)."""
    root = str(data_dir / "nodes")
    out = []
    for p in psutil.process_iter(["pid", "cwd", "cmdline"]):
        try:
            cwd = p.info.get("cwd") or ""
            cmd = " ".join(p.info.get("cmdline") or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if cwd.startswith(root) or root in cmd:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
    return out


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
