"""The embedded Redis after a crash of `up` (issue 10 item 11): its server runs in its own session, so it
outlives a SIGKILLed `up`. The next start on the same data dir adopts that very server (same pid, same port)
instead of starting a second one, and the next stop stops it: no orphan `redis-server` is left."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from controller.services import EmbeddedRedis


def redis_servers(workdir: Path) -> list[int]:
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if "redis-server" in (p.info["name"] or "") and p.status() != psutil.STATUS_ZOMBIE:
                if p.cwd() == str(workdir) or str(workdir) in " ".join(p.info["cmdline"] or []):
                    out.append(p.pid)
        except psutil.Error:
            continue
    return out


def kv(port: int, *cmd: str) -> bytes:
    payload = f"*{len(cmd)}\r\n" + "".join(f"${len(c)}\r\n{c}\r\n" for c in cmd)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(payload.encode())
        return s.recv(256)


@pytest.fixture()
def workdir(tmp_path: Path) -> Iterator[Path]:
    w = tmp_path / "redis"
    yield w
    for pid in redis_servers(w):
        psutil.Process(pid).kill()


def test_a_crashed_runs_redis_is_adopted_and_then_stopped(workdir: Path) -> None:
    first = EmbeddedRedis(workdir)
    url = first.start()
    assert first._proc is not None
    old_pid = first._proc.pid
    kv(first.port, "SET", "k", "v")
    # the process that started it dies without stopping it (SIGKILL): `first` is simply forgotten
    assert redis_servers(workdir) == [old_pid]

    second = EmbeddedRedis(workdir)
    assert second.start() == url, "the adopted server keeps its URL"
    assert redis_servers(workdir) == [old_pid], "a second redis-server was started beside the first"
    assert kv(second.port, "GET", "k").endswith(b"v\r\n")

    second.stop()
    proc = psutil.Process(old_pid) if psutil.pid_exists(old_pid) else None
    assert proc is None or proc.status() == psutil.STATUS_ZOMBIE, "stop left the adopted server running"
    assert redis_servers(workdir) == []
    assert not second.record_file.exists()


def test_a_record_naming_another_process_is_not_adopted(workdir: Path) -> None:
    """A recycled pid (here: this test process) with the recorded port: a new server is started."""
    workdir.mkdir(parents=True)
    me = psutil.Process()
    (workdir / "redis.json").write_text(json.dumps({"pid": me.pid, "port": 1, "process_started_at": me.create_time()}))
    r = EmbeddedRedis(workdir)
    try:
        r.start()
        assert r._proc is not None and r._adopted is None
        assert redis_servers(workdir) == [r._proc.pid]
    finally:
        r.stop()
    assert psutil.pid_exists(me.pid)


def test_a_stop_without_a_start_stops_the_crashed_runs_server(workdir: Path) -> None:
    """`down` while the next `up` is still starting: that `up` stops before its Redis stage, and must stop
    the server the crashed run left (seen in tests/integration/test_up_down.py)."""
    first = EmbeddedRedis(workdir)
    first.start()
    assert first._proc is not None
    EmbeddedRedis(workdir).stop()
    assert first._proc.wait(5) is not None
    assert redis_servers(workdir) == []
