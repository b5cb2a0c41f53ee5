"""A faithful fake of adapters/skypilot/client.py: request ids, asynchronous completion, slow calls,
capacity errors and spot preemption. Its "clouds" are directories under `root`; a cluster's "VM"
runs the task's real setup and run scripts as local processes (so the real node agent heartbeats).
The placement call runs SkyPilot's real optimizer on the fixture catalogs.

State lives on disk so a test process can preempt a cluster that a Ray actor launched:
`preempt(root, name)`, and `fail_capacity(root, "runpod/US")` makes launches there fail.
`factory` (INFERIA_SKYPILOT_CLIENT) gives pools that name an `api_server` the real client instead.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import sky
from sky import exceptions as sx

from adapters.skypilot.client import Client, ClusterRecord, SkyClient

_ids = itertools.count(1)


def fake_root(data_dir: str | os.PathLike[str] | None) -> Path:
    return Path(data_dir or "/tmp") / "nodes" / "skypilot-fake"


def preempt(root: Path, name: str) -> None:
    """The cloud reclaims a spot VM: its processes die, the cluster shows STOPPED."""
    state = _read(root / name)
    _kill_all(state)
    state["status"] = "STOPPED"
    _write(root / name, state)


def stop_all(root: Path) -> None:
    """Kill every fake VM's processes (test cleanup; the clusters' state stays)."""
    for path in root.glob("*/cluster.json"):
        _kill_all(_read(path.parent))


def fail_capacity(root: Path, location: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "capacity_errors.json"
    found = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps([*found, location]))


def _read(cdir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((cdir / "cluster.json").read_text()))
    except (OSError, ValueError):
        return {}


def _write(cdir: Path, state: dict[str, Any]) -> None:
    cdir.mkdir(parents=True, exist_ok=True)
    tmp = cdir / "cluster.json.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(cdir / "cluster.json")


def _mount(src: str, dst: Path) -> None:
    """A file mount: a directory or a single file (the node agent) copied onto the "VM"."""
    if dst.exists():
        return
    if os.path.isdir(src):
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def _plain(value: Any) -> str:
    while hasattr(value, "get_secret_value"):  # an in-process YAML round trip wraps SecretStr twice
        value = value.get_secret_value()
    return str(value)


def _kill_all(state: dict[str, Any]) -> None:
    """Every process group a cluster's jobs started (each job is its own session)."""
    for pid in state.get("pids", []):
        try:
            os.killpg(int(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class FakeSkyClient:
    def __init__(
        self,
        endpoint: str | None = None,
        data_dir: str | None = None,
        *,
        clouds: tuple[str, ...] = ("runpod", "lambda"),
        delay_s: float = 0.05,
    ) -> None:
        self.root = fake_root(data_dir)
        self.clouds = clouds
        self.delay_s = delay_s
        self.requests: dict[str, asyncio.Task[Any]] = {}
        self.calls: list[tuple[str, str]] = []

    # ------------------------------------------------------------ request model
    def _submit(self, kind: str, coro: Any) -> str:
        rid = f"req-{kind}-{next(_ids)}"
        self.requests[rid] = asyncio.ensure_future(coro)
        return rid

    async def get(self, request_id: str, timeout_s: float | None = None) -> Any:
        return await asyncio.wait_for(asyncio.shield(self.requests[request_id]), timeout_s)

    # ------------------------------------------------------------ cluster calls
    async def launch(self, task: sky.Task, cluster_name: str, *, idle_minutes_to_autostop: int | None) -> str:
        self.calls.append(("launch", cluster_name))
        # the real SDK serialises the task to YAML for the server: do the same round trip
        task = sky.Task.from_yaml_config(task.to_yaml_config())
        return self._submit("launch", self._launch(task, cluster_name))

    async def _launch(self, task: sky.Task, name: str) -> tuple[int | None, None]:
        await asyncio.sleep(self.delay_s)
        res = next(iter(task.resources))
        cdir = self.root / name
        state = _read(cdir)
        if state.get("status") == "UP":
            return None, None
        location = f"{str(res.cloud).lower()}/{res.region}"
        errors_path = self.root / "capacity_errors.json"
        if errors_path.exists() and location in json.loads(errors_path.read_text()):
            raise sx.ResourcesUnavailableError(f"Failed to acquire resources in {location}: out of capacity")
        for dst, src in (task.file_mounts or {}).items():
            _mount(str(src), cdir / "home" / dst.replace("~/", ""))
        _write(
            cdir,
            {
                "status": "UP",
                "cloud": str(res.cloud).lower(),
                "region": res.region,
                "zone": res.zone,
                "instance_type": res.instance_type,
                "use_spot": bool(res.use_spot),
                "launched_at": 0,
            },
        )
        if task.setup:
            await self._bash(cdir, task, str(task.setup), background=False)
        return None, None

    async def exec(self, task: sky.Task, cluster_name: str) -> str:
        self.calls.append(("exec", cluster_name))
        return self._submit("exec", self._exec(task, cluster_name))

    async def _exec(self, task: sky.Task, name: str) -> tuple[int, None]:
        await asyncio.sleep(self.delay_s)
        cdir = self.root / name
        state = _read(cdir)
        if state.get("status") != "UP":
            raise sx.ClusterNotUpError(f"cluster {name} is not up", cluster_status=None)
        pid = await self._bash(cdir, task, str(task.run), background=True)
        state["pids"] = [*state.get("pids", []), pid]  # a retried exec adds a job; the first may still run
        _write(cdir, state)
        return 1, None

    async def _bash(self, cdir: Path, task: sky.Task, script: str, *, background: bool) -> int:
        home = cdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        # a VM has its own environment, not the control plane's: a login shell's basics, then the task's
        env = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TZ", "TMPDIR")}
        env.update({"HOME": str(home), "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"})
        env.update({k: str(v) for k, v in (task.envs or {}).items()})
        env.update({k: _plain(v) for k, v in (task.secrets or {}).items()})
        log = open(cdir / "job.log", "ab")
        proc = subprocess.Popen(
            ["bash", "-c", script], env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        if not background:
            await asyncio.to_thread(proc.wait)
            if proc.returncode:
                raise sx.CommandError(proc.returncode, "setup", "setup failed", None)
        return proc.pid

    async def down(self, cluster_name: str) -> str:
        self.calls.append(("down", cluster_name))
        return self._submit("down", self._down(cluster_name))

    async def _down(self, name: str) -> None:
        await asyncio.sleep(self.delay_s)
        cdir = self.root / name
        state = _read(cdir)
        if not state:
            raise sx.ClusterDoesNotExist(f"Cluster {name!r} does not exist.")
        _kill_all(state)
        shutil.rmtree(cdir, ignore_errors=True)

    async def status(self, cluster_names: list[str] | None, *, refresh: bool) -> list[ClusterRecord]:
        rid = self._submit("status", self._status(cluster_names))
        result: list[ClusterRecord] = await self.get(rid)
        return result

    async def _status(self, names: list[str] | None) -> list[ClusterRecord]:
        await asyncio.sleep(self.delay_s / 5)
        out = []
        dirs = [self.root / n for n in names] if names else sorted(self.root.glob("*/"))
        for cdir in dirs:
            s = _read(cdir)
            if s:
                out.append(
                    ClusterRecord(
                        name=cdir.name,
                        status=s["status"],
                        cloud=s["cloud"],
                        region=s["region"],
                        zone=s.get("zone"),
                        instance_type=s["instance_type"],
                        use_spot=s["use_spot"],
                        head_ip="127.0.0.1",
                        launched_at=s.get("launched_at"),
                    )
                )
        return out

    async def endpoint(self, cluster_name: str, port: int) -> str | None:
        return f"http://127.0.0.1:{port}" if _read(self.root / cluster_name).get("status") == "UP" else None

    async def tail_logs(self, cluster_name: str, tail: int) -> list[str]:
        cdir = self.root / cluster_name
        if not _read(cdir):
            raise sx.ClusterDoesNotExist(f"Cluster {cluster_name!r} does not exist.")
        lines = (cdir / "job.log").read_text(errors="replace").splitlines() if (cdir / "job.log").exists() else []
        return lines[-tail:]

    async def enabled_clouds(self) -> list[str]:
        return list(self.clouds)

    async def optimize(self, dag: sky.Dag) -> sky.Resources:
        """What the API server does for sky.optimize: the real optimizer with its enabled clouds."""
        from sky import check as sky_check
        from sky import optimizer
        from sky.utils import registry

        enabled = [registry.CLOUD_REGISTRY.from_str(c) for c in self.clouds]

        def run() -> sky.Resources:
            with mock.patch.object(sky_check, "get_cached_enabled_clouds_or_refresh", return_value=enabled):
                best: sky.Resources = optimizer.Optimizer.optimize(dag, quiet=True).tasks[0].best_resources
                return best

        return await asyncio.to_thread(run)

    async def close(self) -> None:
        for task in self.requests.values():
            task.cancel()


def factory(endpoint: str | None = None, data_dir: str | None = None) -> Client:
    """The fake for pools on the local (default) API server; a pool that names `api_server` gets the real
    client, so a test can run SkyPilot's request path against a real API server it started."""
    if endpoint:
        return SkyClient(endpoint)
    return FakeSkyClient(endpoint, data_dir)
