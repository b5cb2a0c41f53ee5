"""The node agent against a local heartbeat receiver and the fake engine (real processes)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest

from adapters import agent as agent_mod

ROOT = Path(__file__).resolve().parents[2]
FAKE_ENGINE = ROOT / "tests" / "support" / "fake_engine.py"
TOKEN = "node-token-5f1e2d"
KEY = "inference-key-9a8b7c"
INTERVAL = 0.5


class Receiver(ThreadingHTTPServer):
    """Records heartbeats; answers with `status`."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.beats: list[dict[str, Any]] = []
        self.auth: list[str] = []
        self.status = 200
        self.on_beat: Callable[[dict[str, Any]], None] | None = None
        self.times: list[float] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/inventory/heartbeat"

    def states(self) -> list[str]:
        with self.lock:
            return [b["state"] for b in self.beats]


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        if self.server.on_beat is not None:
            self.server.on_beat(body)
        with self.server.lock:
            self.server.beats.append(body)
            self.server.times.append(time.monotonic())
            self.server.auth.append(self.headers.get("Authorization", ""))
        data = b"{}"
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float = 8.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class AgentRunner:
    """Starts agents as real processes (own session) and kills what is left at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        receiver: Receiver,
        *,
        engine: list[str] | None = None,
        port: int | None = None,
        health_path: str = "/v1/models",
        post_start: list[str] | None = None,
        engine_env: dict[str, str] | None = None,
        probe_key: str | None = None,
        interval: float = INTERVAL,
        fallback: Receiver | None = None,
    ) -> subprocess.Popen[bytes]:
        argv = [
            sys.executable,
            "-m",
            "adapters.agent",
            "--node-id",
            "node-1",
            "--heartbeat-url",
            receiver.url,
            "--interval",
            str(interval),
            "--engine-log",
            str(self.tmp / "engine.log"),
        ]
        if engine is not None:
            argv += ["--endpoint", f"http://127.0.0.1:{port}", "--health-path", health_path]
            argv += ["--engine-cmd", json.dumps(engine)]
        if post_start is not None:
            argv += ["--post-start-cmd", json.dumps(post_start)]
        if fallback is not None:
            argv += ["--heartbeat-fallback-url", fallback.url]
        env = {**os.environ, "PYTHONPATH": str(ROOT), agent_mod.TOKEN_ENV: TOKEN}
        if engine_env is not None:
            env[agent_mod.ENGINE_ENV_ENV] = json.dumps(engine_env)
        if probe_key is not None:
            env[agent_mod.PROBE_KEY_ENV] = probe_key
        with open(self.tmp / "agent.log", "ab") as log:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs.append(proc)
        return proc

    def agent_log(self) -> str:
        return (self.tmp / "agent.log").read_text(errors="replace")

    def cleanup(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[AgentRunner]:
    r = AgentRunner(tmp_path)
    try:
        yield r
    finally:
        r.cleanup()


def fake_engine(port: int, delay: float = 0.0) -> list[str]:
    cmd = [sys.executable, str(FAKE_ENGINE), "--port", str(port), "--model", "tiny"]
    if delay <= 0:
        return cmd
    # a slow start, so the agent reports "starting" first
    script = f"import os, sys, time; time.sleep({delay}); os.execv(sys.executable, {cmd!r})"
    return [sys.executable, "-c", script]


def engine_pids(agent_pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(agent_pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_reports_starting_then_ready(receiver: Receiver, runner: AgentRunner) -> None:
    port = free_port()
    proc = runner.start(receiver, engine=fake_engine(port, delay=1.0), port=port)
    wait_for(lambda: "ready" in receiver.states(), what="a ready heartbeat")
    states = receiver.states()
    assert states[0] == "starting"
    first_ready = states.index("ready")
    assert set(states[:first_ready]) == {"starting"}
    with receiver.lock:
        starting, ready = receiver.beats[0], receiver.beats[first_ready]
        auth = set(receiver.auth)
    assert set(ready) == {
        "node_id",
        "seq",
        "start_id",
        "state",
        "health_score",
        "endpoint",
        "cpu_percent",
        "ram_used_mb",
        "gpu_util",
        "reason",
    }
    assert starting["health_score"] == 0
    assert ready["seq"] > starting["seq"] and ready["start_id"] == starting["start_id"]
    assert ready["node_id"] == "node-1"
    assert ready["health_score"] == 100
    assert ready["endpoint"] == f"http://127.0.0.1:{port}"
    assert ready["gpu_util"] is None and ready["reason"] is None
    assert auth == {f"Bearer {TOKEN}"}
    assert proc.poll() is None
    assert TOKEN not in runner.agent_log()


def test_ready_heartbeat_is_sent_at_once(receiver: Receiver, runner: AgentRunner) -> None:
    """With a long interval the first ready beat still comes right after the engine answers."""
    port = free_port()
    runner.start(receiver, engine=fake_engine(port, delay=0.5), port=port, interval=30.0)
    url = f"http://127.0.0.1:{port}/v1/models"
    wait_for(lambda: _answers(url), what="the engine to answer")
    up = time.monotonic()
    wait_for(lambda: "ready" in receiver.states(), timeout=3.0, what="a ready heartbeat")
    index = receiver.states().index("ready")
    with receiver.lock:
        ready_at = receiver.times[index]
    assert ready_at - up < 1.0
    time.sleep(1.2)  # ready beats now follow the 30 s interval, not the 0.5 s start cadence
    assert receiver.states().count("ready") == 1


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def test_reports_failed_when_engine_dies(receiver: Receiver, runner: AgentRunner) -> None:
    port = free_port()
    proc = runner.start(receiver, engine=fake_engine(port), port=port)
    wait_for(lambda: "ready" in receiver.states(), what="a ready heartbeat")
    pids = engine_pids(proc.pid)
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=5) == 1
    with receiver.lock:
        last = receiver.beats[-1]
    assert last["state"] == "failed"
    assert last["reason"] == "engine exited with code -9"
    assert last["health_score"] == 0


def test_engine_that_cannot_start_is_reported(receiver: Receiver, runner: AgentRunner) -> None:
    proc = runner.start(receiver, engine=["/nonexistent/engine-binary"], port=free_port())
    assert proc.wait(timeout=5) == 1
    with receiver.lock:
        last = receiver.beats[-1]
    assert last["state"] == "failed"
    assert last["reason"].startswith("engine could not start")


def test_stops_on_410(receiver: Receiver, runner: AgentRunner) -> None:
    port = free_port()
    proc = runner.start(receiver, engine=fake_engine(port), port=port)
    wait_for(lambda: "ready" in receiver.states(), what="a ready heartbeat")
    pids = engine_pids(proc.pid)
    receiver.status = 410
    assert proc.wait(timeout=5) == 0
    wait_for(lambda: all(gone(p) for p in pids), timeout=3, what="the engine to stop")


def test_keeps_trying_while_control_plane_refuses(receiver: Receiver, runner: AgentRunner) -> None:
    receiver.status = 503
    proc = runner.start(receiver)
    wait_for(lambda: len(receiver.states()) >= 3, what="three heartbeats")
    assert proc.poll() is None
    receiver.status = 403
    count = len(receiver.states())
    wait_for(lambda: len(receiver.states()) >= count + 2, what="two more heartbeats")
    assert proc.poll() is None
    receiver.status = 200
    count = len(receiver.states())
    wait_for(lambda: len(receiver.states()) >= count + 1, what="one more heartbeat")
    assert proc.poll() is None


def test_keeps_trying_while_control_plane_is_down(runner: AgentRunner, receiver: Receiver) -> None:
    dead = Receiver()
    dead.server_close()  # nothing listens on its port any more
    proc = runner.start(dead)
    time.sleep(1.5)
    assert proc.poll() is None
    assert TOKEN not in runner.agent_log()


def test_uses_the_fallback_url_when_the_primary_is_unreachable(runner: AgentRunner, receiver: Receiver) -> None:
    dead = Receiver()
    dead.server_close()  # e.g. the direct-ingress port while the API replica restarts
    proc = runner.start(dead, fallback=receiver)
    wait_for(lambda: len(receiver.states()) >= 2, what="heartbeats through the fallback URL")
    assert proc.poll() is None


def test_idle_node_heartbeats_ready(receiver: Receiver, runner: AgentRunner) -> None:
    proc = runner.start(receiver)
    wait_for(lambda: len(receiver.states()) >= 2, what="two heartbeats")
    with receiver.lock:
        beats = list(receiver.beats)
    assert all(b["state"] == "ready" and b["endpoint"] is None and b["health_score"] == 100 for b in beats)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0


def test_sigterm_stops_the_engine(receiver: Receiver, runner: AgentRunner) -> None:
    port = free_port()
    proc = runner.start(receiver, engine=fake_engine(port), port=port)
    wait_for(lambda: "ready" in receiver.states(), what="a ready heartbeat")
    pids = engine_pids(proc.pid)
    assert pids
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=8) == 0
    wait_for(lambda: all(gone(p) for p in pids), timeout=3, what="the engine to stop")
    assert "failed" not in receiver.states()


def test_ready_only_after_post_start(receiver: Receiver, runner: AgentRunner, tmp_path: Path) -> None:
    marker = tmp_path / "pulled"
    seen_marker: list[bool] = []

    def on_beat(body: dict[str, Any]) -> None:
        if body["state"] == "ready":
            seen_marker.append(marker.exists())

    receiver.on_beat = on_beat
    port = free_port()
    post = [sys.executable, "-c", f"import pathlib, time; time.sleep(1.0); pathlib.Path({str(marker)!r}).touch()"]
    runner.start(receiver, engine=fake_engine(port), port=port, post_start=post)
    wait_for(lambda: "ready" in receiver.states(), what="a ready heartbeat")
    assert seen_marker and all(seen_marker)
    assert receiver.states()[0] == "starting"


def test_failed_post_start_fails_the_node(receiver: Receiver, runner: AgentRunner) -> None:
    port = free_port()
    proc = runner.start(
        receiver, engine=fake_engine(port), port=port, post_start=[sys.executable, "-c", "raise SystemExit(4)"]
    )
    assert proc.wait(timeout=8) == 1
    with receiver.lock:
        last = receiver.beats[-1]
    assert last["state"] == "failed"
    assert last["reason"] == "post-start command exited with code 4"
    assert "ready" not in receiver.states()


def test_probe_uses_the_inference_key_and_never_logs_it(receiver: Receiver, runner: AgentRunner) -> None:
    port = free_port()
    runner.start(
        receiver,
        engine=fake_engine(port),
        port=port,
        engine_env={"INFERIA_INFERENCE_KEY": KEY},
        probe_key=KEY,
    )
    wait_for(lambda: "ready" in receiver.states(), what="a ready heartbeat")
    log = runner.agent_log()
    assert KEY not in log and TOKEN not in log


def test_engine_does_not_inherit_the_agent_secrets(receiver: Receiver, runner: AgentRunner, tmp_path: Path) -> None:
    dump = tmp_path / "env.json"
    script = f"import json, os, time; json.dump(dict(os.environ), open({str(dump)!r}, 'w')); time.sleep(30)"
    runner.start(
        receiver,
        engine=[sys.executable, "-c", script],
        port=free_port(),
        engine_env={"ENGINE_VAR": "x", "INFERIA_INFERENCE_KEY": KEY},
        probe_key=KEY,
    )
    wait_for(dump.exists, what="the engine env dump")
    wait_for(lambda: dump.stat().st_size > 0, what="the engine env dump")
    time.sleep(0.2)
    env = json.loads(dump.read_text())
    assert env["ENGINE_VAR"] == "x"
    assert env["INFERIA_INFERENCE_KEY"] == KEY  # given to the engine on purpose
    for private in agent_mod.PRIVATE_ENV:
        assert private not in env


class _HealthStub(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        status = 200 if self.path == "/v1/models" else 404
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


def test_probe_falls_back_from_health_to_models() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HealthStub)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        cfg = agent_mod.AgentConfig(
            node_id="n",
            heartbeat_url="http://127.0.0.1:1/",
            token=TOKEN,
            endpoint=f"http://127.0.0.1:{server.server_address[1]}",
            health_path="/health",
            engine_cmd=["unused"],
        )
        agent = agent_mod.Agent(cfg)
        try:
            assert agent._probe_and_update() is True
            assert agent.state == "ready"
            assert agent._health_path == "/v1/models"
        finally:
            agent._client.close()
    finally:
        server.shutdown()
        server.server_close()


def test_ready_node_degrades_after_failed_probes() -> None:
    cfg = agent_mod.AgentConfig(
        node_id="n", heartbeat_url="http://127.0.0.1:1/", token=TOKEN, endpoint="http://127.0.0.1:1", engine_cmd=["x"]
    )
    agent = agent_mod.Agent(cfg)
    try:
        agent.state = "ready"
        assert agent._probe_and_update() is False
        assert agent.health_score() == 66 and agent.reason
        agent._probe_and_update()
        assert agent._probe_and_update() is True
        assert agent.state == "starting" and agent.health_score() == 0
    finally:
        agent._client.close()


def test_main_requires_the_token(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(agent_mod.TOKEN_ENV, raising=False)
    assert agent_mod.main(["--node-id", "n", "--heartbeat-url", "http://127.0.0.1:1/"]) == 2
    assert agent_mod.TOKEN_ENV in capsys.readouterr().err


def test_config_repr_hides_secrets() -> None:
    cfg = agent_mod.AgentConfig(
        node_id="n", heartbeat_url="u", token=TOKEN, engine_env={"VLLM_API_KEY": KEY}, probe_key=KEY
    )
    assert TOKEN not in repr(cfg) and KEY not in repr(cfg)
    assert agent_mod.mask(f"--x {KEY} {TOKEN}", cfg.secrets()) == "--x *** ***"


def test_each_beat_carries_the_next_seq_and_the_start_id() -> None:
    """Issue 10 #8: the inventory ignores a beat older than one it applied (same start_id)."""
    cfg = agent_mod.AgentConfig(node_id="n", heartbeat_url="http://127.0.0.1:1/", token=TOKEN)
    first, second = agent_mod.Agent(cfg), agent_mod.Agent(cfg)
    try:
        a, b = first.heartbeat_body(), first.heartbeat_body()
        assert (a["seq"], b["seq"]) == (1, 2)
        assert a["start_id"] == b["start_id"] == first.start_id
        assert second.heartbeat_body()["start_id"] != first.start_id  # a new agent start
    finally:
        first._client.close()
        second._client.close()
