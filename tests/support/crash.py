"""Run a whole control plane (`inferia-orch up`, foreground) as a separate process group, find every process
that belongs to it, and kill all of them at once like a machine crash.

"Belongs to it": the `up` process and its descendants (Ray's GCS, raylet, workers and actors; the embedded
Redis), every process whose command line or working directory points into its data dir (the embedded
PostgreSQL, which `pg_ctl` daemonizes away from the tree), every process with the data dir as its
INFERIA_DATA_DIR (inherited by everything `up` starts), and every process of the Ray session that `up`
started (Ray names the session directory after the driver's pid), with their descendants. Other control
planes and Ray sessions on the same machine are left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import httpx
import psutil

from controller.client import Client
from controller.services import free_port
from tests.support import instant

ROOT = Path(__file__).resolve().parents[2]
_SESSION = re.compile(r"session_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+_(\d+)")


class ControlPlaneProcess:
    """One `up` process on its own data dir and ports; start() may be called again after a crash."""

    def __init__(self, data_dir: Path, interval_s: float = 1.0) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = dict(os.environ)
        self.env.update(
            INFERIA_DATA_DIR=str(data_dir),
            INFERIA_API_PORT=str(self.port),
            INFERIA_DATA_PORT=str(free_port()),
            INFERIA_HEARTBEAT_INTERVAL_S=str(interval_s),
            INFERIA_ADAPTERS=instant.ENV_ADAPTERS,
            INFERIA_LOG_LEVEL="INFO",
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        )
        for k in ("RAY_ADDRESS", "INFERIA_API_TOKEN", "POSTGRES_DSN", "REDIS_HOST", "INFERIA_DETACHED_CHILD"):
            self.env.pop(k, None)
        self.env.setdefault("INFERIA_DASHBOARD", "false")  # tests and benches: no Ray dashboard
        self.proc: subprocess.Popen[bytes] | None = None
        self.sessions: set[str] = set()  # Ray session names of every `up` run (for the final sweep)
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "up-test.log"

    def start(self, timeout: float = 240.0, attempts: int = 2) -> float:
        """Start `up` and wait until it wrote its runtime file and answers /healthz; seconds it took.

        On a loaded machine Ray's own startup may give up ("timed out during startup", a fixed 30 s raylet
        wait): that attempt's processes are killed and `up` is started once more."""
        t0 = time.monotonic()
        for attempt in range(attempts):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._start_once(t0 + timeout)
                return time.monotonic() - t0
            except AssertionError:
                new = self.log_path.read_text(errors="replace")[offset:] if self.log_path.exists() else ""
                if attempt + 1 >= attempts or "timed out during startup" not in new:
                    raise
                self.kill_everything()
        raise AssertionError("unreachable")

    def _start_once(self, deadline: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "up"],
            cwd=str(ROOT),
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        runtime = self.data_dir / "runtime.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"`up` exited with {self.proc.returncode}:\n{self.log_tail()}")
            self.remember()
            if runtime.exists() and _read_pid(runtime) == (self.proc.pid, "running") and self.healthy():
                return
            time.sleep(0.5)
        raise AssertionError(f"`up` not healthy in time:\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=5, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def client(self) -> Client:
        token = (self.data_dir / "api_token").read_text().strip()
        return Client(self.url, token=token, timeout=60)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    # ------------------------------------------------------------ processes
    def remember(self) -> set[int]:
        """Record the Ray session of the current run and every pid seen so far; the live processes now."""
        live = self.processes()
        for pid in live:
            with contextlib.suppress(psutil.Error):
                for m in _SESSION.finditer(" ".join(psutil.Process(pid).cmdline())):
                    if self.proc is not None and int(m.group(1)) == self.proc.pid:
                        self.sessions.add(m.group(0))
        return live

    def processes(self) -> set[int]:
        """Every live (non-zombie) process of this control plane, by tree, data dir and Ray session."""
        roots: set[int] = set()
        if self.proc is not None and self.proc.poll() is None:
            roots.add(self.proc.pid)
        data = str(self.data_dir)
        for p in psutil.process_iter(["pid", "cmdline", "cwd"]):
            try:
                cmd = " ".join(p.info.get("cmdline") or [])
                cwd = p.info.get("cwd") or ""
            except psutil.Error:
                continue
            if p.pid == os.getpid():
                continue
            if data in cmd or cwd.startswith(data) or any(s in cmd for s in self.sessions) or _env_dir(p) == data:
                roots.add(p.pid)
        out: set[int] = set()
        for pid in roots:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                out.add(pid)
                out.update(c.pid for c in proc.children(recursive=True))
        return {pid for pid in out if _alive(pid)}

    def crash(self, timeout: float = 30.0) -> int:
        """SIGSTOP then SIGKILL every process of this control plane (nothing gets to clean up); count killed."""
        killed: set[int] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = self.remember() - {os.getpid()}
            if not live:
                break
            _signal(live, signal.SIGSTOP)  # freeze first: no one notices the others dying and reacts
            _signal(live, signal.SIGKILL)
            killed |= live
            if self.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(0.5)
            time.sleep(0.2)
        left = self.processes()
        assert not left, f"still alive after the crash: {describe(left)}"
        # as after a real crash, not even zombies are left (a zombie postmaster would block its successor)
        while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in killed):
            time.sleep(0.2)
        self.close_log()
        return len(killed)

    def stop(self, timeout: float = 150.0) -> float:
        """A clean stop through `inferia-orch down`; seconds until `up` exited."""
        t0 = time.monotonic()
        down = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "down", "--timeout", str(timeout)],
            cwd=str(ROOT),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # `up` is our child: reap it as soon as it exits, or `down` keeps seeing its zombie as running
        while down.poll() is None and time.monotonic() - t0 < timeout + 30:
            if self.proc is not None:
                self.proc.poll()
            time.sleep(0.2)
        out = down.communicate(timeout=5)[0] if down.poll() is not None else "(still running)"
        assert down.returncode == 0, f"down -> {down.returncode}\n{out}\n{self.log_tail()}"
        if self.proc is not None:
            self.proc.wait(30)
        self.close_log()
        return time.monotonic() - t0

    def leftovers(self, grace_s: float = 20.0) -> set[int]:
        """Processes of this control plane still alive after a stop (given grace_s to exit by themselves)."""
        deadline = time.monotonic() + grace_s
        left = self.processes()
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = self.processes()
        return left

    def kill_everything(self) -> None:
        """Last-resort cleanup: whatever of this control plane is still alive, by every means we know."""
        with contextlib.suppress(Exception):
            if self.proc is not None and self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        for _ in range(5):
            left = self.processes()
            if not left:
                break
            _signal(left, signal.SIGKILL)
            time.sleep(0.3)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        self.close_log()

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def describe(pids: Iterable[int]) -> list[str]:
    out = []
    for pid in sorted(pids):
        try:
            out.append(f"{pid}: {' '.join(psutil.Process(pid).cmdline())[:160]}")
        except psutil.Error:
            out.append(f"{pid}: (gone)")
    return out


def actor_processes(pids: Iterable[int], cls: str) -> list[int]:
    """Ray worker processes hosting an actor of class `cls` (Ray titles them `ray::<Class>...`)."""
    out = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            cmd = psutil.Process(pid).cmdline()
            if cmd and re.match(rf"ray::{cls}\b", cmd[0]):
                out.append(pid)
    return out


def _env_dir(p: psutil.Process) -> str | None:
    """INFERIA_DATA_DIR in a process's environment: every process `up` starts inherits it (Ray workers too,
    even once orphaned by a dead raylet)."""
    try:
        return p.environ().get("INFERIA_DATA_DIR")
    except psutil.Error:
        return None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _read_pid(path: Path) -> tuple[int, str] | None:
    """(pid, state) that `up` recorded; the state is `starting` until the API answers, then `running`."""
    try:
        data = json.loads(path.read_text())
        return int(data["pid"]), str(data.get("state"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
