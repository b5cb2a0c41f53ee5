"""`<data dir>/runtime.json`: how to reach the control plane that `up` runs on this data dir, and whether it is
really running.

`up` writes the file first thing (state `starting`, its pid and process start time), again once Ray runs (its
address and dashboard), and once the API answers (state `running`); a clean stop removes it. A crashed `up`
leaves it behind, so every reader checks the recorded process: the pid must be alive, started at the recorded
time (a recycled pid is another process) and be an `up` command (see `owner_alive`). Only then does `down`
signal it or does another `up` refuse to start on the same data dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import psutil

FILE_NAME = "runtime.json"
STARTING = "starting"
RUNNING = "running"
# a process's start time as psutil reads it twice may differ by the clock tick (1/100 s) rounding
_START_TIME_SLACK_S = 0.05


@dataclass
class RuntimeInfo:
    pid: int
    process_started_at: float  # psutil's create_time() of `pid`: with the pid, names one process for ever
    data_dir: str
    state: str = STARTING
    started_at: float = field(default_factory=time.time)
    api_url: str | None = None
    data_url: str | None = None
    ray_address: str | None = None  # the GCS address: `ray.init(address=...)` from another process joins it
    ray_started_here: bool = False
    dashboard_url: str | None = None
    namespace: str = "inferia"
    pool_hosts: int = 0
    postgres_embedded: bool = False
    redis_embedded: bool = False
    redis_url: str | None = None
    log_file: str | None = None
    ports: dict[str, int] = field(default_factory=dict)  # api, data, redis (embedded), dashboard

    @classmethod
    def for_this_process(cls, data_dir: Path, **kw: Any) -> RuntimeInfo:
        pid = os.getpid()
        return cls(pid=pid, process_started_at=psutil.Process(pid).create_time(), data_dir=str(data_dir), **kw)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RuntimeInfo:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        kw.setdefault("process_started_at", 0.0)  # a file of an older version: never matches a live process
        kw.setdefault("data_dir", "")
        return cls(**kw)


def path_for(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def write(data_dir: Path, info: RuntimeInfo) -> None:
    """Atomically (write + rename), mode 0600."""
    path = path_for(data_dir)
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(asdict(info), indent=2))
    os.replace(tmp, path)


def read(data_dir: Path) -> RuntimeInfo | None:
    """The recorded facts, or None when there is no (readable) file. Says nothing about liveness."""
    try:
        data = json.loads(path_for(data_dir).read_text())
        return RuntimeInfo.from_dict(data) if isinstance(data, dict) and "pid" in data else None
    except (OSError, ValueError, TypeError):
        return None


def remove(data_dir: Path, pid: int | None = None) -> None:
    """Remove the file; with `pid`, only while it still names that pid (never a successor's file)."""
    if pid is not None:
        info = read(data_dir)
        if info is not None and info.pid != pid:
            return
    with contextlib.suppress(FileNotFoundError):
        path_for(data_dir).unlink()


def is_up_command(cmdline: list[str]) -> bool:
    """`inferia-orch up ...` or `python -m controller.cli up ...` (what --detach starts)."""
    words = [os.path.basename(w) for w in cmdline]
    if "up" not in words:
        return False
    before_up = words[: words.index("up")]
    return "inferia-orch" in before_up or "controller.cli" in before_up


def owner_alive(info: RuntimeInfo, *, require_up_command: bool = True) -> psutil.Process | None:
    """The live process the file names, or None when it is gone or another process now has its pid.

    The pid must exist and not be a zombie, its start time must be the recorded one, and (with
    `require_up_command`) its command line must be an `up` command. A control plane embedded in another
    program (the tests' in-process `ControlPlane`) passes only with require_up_command=False."""
    try:
        proc = psutil.Process(info.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if abs(proc.create_time() - info.process_started_at) > _START_TIME_SLACK_S:
            return None
        if require_up_command and not is_up_command(proc.cmdline()):
            return None
        return proc
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:  # another user's process holds the pid: not ours
        return None


def live(data_dir: Path, *, require_up_command: bool = True) -> tuple[RuntimeInfo, psutil.Process] | None:
    info = read(data_dir)
    if info is None:
        return None
    proc = owner_alive(info, require_up_command=require_up_command)
    return (info, proc) if proc is not None else None


class AlreadyRunning(RuntimeError):
    def __init__(self, info: RuntimeInfo) -> None:
        super().__init__(
            f"a control plane already runs on the data dir {info.data_dir} (pid {info.pid}, {info.state}"
            + (f", {info.api_url}" if info.api_url else "")
            + "): stop it with `inferia-orch down`, or use another INFERIA_DATA_DIR"
        )
        self.info = info


def claim(data_dir: Path) -> RuntimeInfo:
    """Record this process as the data dir's control plane (state `starting`), unless another live process
    holds the data dir (AlreadyRunning). A file left by a dead or recycled pid is replaced. Called again by
    the same process, it keeps the record it made."""
    current = live(data_dir, require_up_command=False)
    if current is not None:
        info, _ = current
        if info.pid != os.getpid():
            raise AlreadyRunning(info)
        return info
    info = RuntimeInfo.for_this_process(data_dir)
    write(data_dir, info)
    return info
