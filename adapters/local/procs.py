"""Process and file helpers for the local provider: liveness with a pid-reuse guard, process groups,
detached spawning, free ports, atomic JSON files and log tails. Everything here blocks: call it
from a worker thread (asyncio.to_thread) when on an event loop."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

# psutil derives create_time from boot time + start ticks; allow for float rounding only
CREATE_TIME_TOLERANCE_S = 0.05

# Runs in a short-lived intermediate process: starts the real command in a new session and
# prints its pid. The intermediate exits at once, so the command is reparented to init and is
# no child of the caller (Ray kills a worker's direct children when the worker exits).
_LAUNCHER = """
import json, subprocess, sys
log_path, cwd, argv = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with open(log_path, "ab", buffering=0) as log:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            cwd=cwd, start_new_session=True, close_fds=True)
sys.stdout.write(str(proc.pid))
"""


def process_create_time(pid: int) -> float | None:
    """The process's create time, None when there is no such (living) process."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError, ValueError):
        return None


def pid_alive(pid: int | None, create_time: float | None) -> bool:
    """True when `pid` runs and is the process that was started at `create_time` (not a reuse)."""
    if not pid or pid <= 0:
        return False
    actual = process_create_time(pid)
    if actual is None:
        return False
    if create_time is None:
        return True
    return abs(actual - create_time) <= CREATE_TIME_TOLERANCE_S


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError, OSError):
        return None


def group_members(pgid: int, *, include_zombies: bool = False) -> list[psutil.Process]:
    """Processes whose process group is `pgid`."""
    members: list[psutil.Process] = []
    for proc in psutil.process_iter():
        if _pgid(proc.pid) != pgid:
            continue
        if not include_zombies:
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        members.append(proc)
    return members


def owns_group(pgid: int, create_time: float | None) -> bool:
    """True when process group `pgid` still is the group our session leader started.

    The leader alive with the recorded create time: ours. The leader gone but members left
    (an orphaned engine): ours too, because Linux never hands out a pid still used as a group
    id. A different process now holding the pid: not ours.
    """
    if pgid <= 1:
        return False
    actual = process_create_time(pgid)
    if actual is not None:
        return create_time is None or abs(actual - create_time) <= CREATE_TIME_TOLERANCE_S
    try:
        psutil.Process(pgid)
        leader_exists = True  # a zombie leader: the group is still the one it created
    except psutil.NoSuchProcess:
        leader_exists = False
    except psutil.AccessDenied:
        return False
    return leader_exists or bool(group_members(pgid))


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        _reap(pgid)
        if not group_members(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def terminate_group(pgid: int | None, create_time: float | None, grace_s: float = 10.0) -> bool:
    """SIGTERM the whole process group, wait up to `grace_s`, then SIGKILL.

    Returns True when something was signalled. A group that is gone (or was never ours) is left alone.
    """
    if not pgid or not owns_group(pgid, create_time):
        return False
    _signal_group(pgid, signal.SIGTERM)
    if not wait_group_gone(pgid, grace_s):
        _signal_group(pgid, signal.SIGKILL)
        wait_group_gone(pgid, 5.0)
    return True


def kill_strays(cwd: str | os.PathLike[str]) -> list[int]:
    """SIGKILL every process whose working directory is `cwd` (a node's agent and engine left by a
    provision that died between starting the agent and recording it); the pids killed."""
    target = os.path.realpath(cwd)
    killed = []
    for proc in psutil.process_iter(["pid", "cwd"]):
        try:
            if proc.info.get("cwd") and os.path.realpath(proc.info["cwd"]) == target and proc.pid != os.getpid():
                proc.kill()
                killed.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    if killed:
        psutil.wait_procs([psutil.Process(p) for p in killed if psutil.pid_exists(p)], timeout=5.0)
    return killed


def spawn_detached(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | os.PathLike[str],
    log_path: str | os.PathLike[str],
) -> int:
    """Start `argv` in a new session, detached from this process; output appended to `log_path`.

    Returns the pid (also the process group id). `env` reaches the command only through the
    environment, never the command line.
    """
    launcher = [sys.executable, "-c", _LAUNCHER, os.fspath(log_path), os.fspath(cwd), json.dumps(list(argv))]
    result = subprocess.run(
        launcher,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if result.returncode != 0 or not result.stdout.strip().isdigit():
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise OSError(f"could not start {argv[0]!r}: {detail}")
    return int(result.stdout.strip())


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def find_free_port(host: str, low: int, high: int, exclude: Iterable[int] = ()) -> int:
    """A port in [low, high] that can be bound on `host` now, starting at a random point."""
    taken = set(exclude)
    span = high - low + 1
    start = random.randrange(span)
    for i in range(span):
        port = low + (start + i) % span
        if port not in taken and port_is_free(host, port):
            return port
    raise OSError(f"no free port in {low}-{high} on {host}")


def write_json_atomic(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """Write JSON to a temp file in the same directory, fsync it, then os.replace it into place."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The JSON object in `path`; None when the file is missing or not a JSON object."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def tail_lines(path: str | os.PathLike[str], count: int, block: int = 8192) -> list[str]:
    """The last `count` lines of a text file ([] when missing), read backwards in blocks."""
    if count <= 0:
        return []
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            pos = fh.tell()
            data = b""
            while pos > 0 and data.count(b"\n") <= count:
                step = min(block, pos)
                pos -= step
                fh.seek(pos)
                data = fh.read(step) + data
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-count:]
