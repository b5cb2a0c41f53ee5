"""`<data dir>/runtime.json` and `inferia-orch down`: a stale file (dead pid, recycled pid, a foreign
process) never gets a process signalled; a live `up` command is stopped. No Ray: the "control planes" here
are small processes whose command line looks like (or unlike) `up`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from controller import cli, runtime_file
from controller.runtime_file import RuntimeInfo

# sleeps until SIGTERM; its command line ends in `-m controller.cli up` like what `up --detach` starts
FAKE_UP = [sys.executable, "-c", "import time; time.sleep(120)", "-m", "controller.cli", "up"]
SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("INFERIA_DATA_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture()
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(5)


def start(procs: list[subprocess.Popen[bytes]], cmd: list[str]) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(cmd)
    procs.append(p)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(psutil.Process(p.pid).cmdline()) < len(cmd):
        time.sleep(0.02)  # until exec has replaced the forked image's command line
    return p


def record(data_dir: Path, pid: int, started: float | None = None, state: str = "running") -> None:
    if started is None:
        started = psutil.Process(pid).create_time()
    runtime_file.write(data_dir, RuntimeInfo(pid=pid, process_started_at=started, data_dir=str(data_dir), state=state))


def dead_pid() -> int:
    p = subprocess.Popen(SLEEPER)
    p.kill()
    p.wait()
    return p.pid


def down() -> tuple[int, str]:
    res = CliRunner().invoke(cli.app, ["down", "--timeout", "10"])
    return res.exit_code, res.output


def test_file_is_written_atomically_with_mode_0600(data_dir: Path) -> None:
    info = runtime_file.claim(data_dir)
    assert info.pid == os.getpid() and info.state == runtime_file.STARTING
    path = runtime_file.path_for(data_dir)
    assert path.stat().st_mode & 0o777 == 0o600
    again = runtime_file.read(data_dir)
    assert again is not None and again.process_started_at == pytest.approx(psutil.Process().create_time())
    assert runtime_file.claim(data_dir).started_at == info.started_at  # the same process keeps its record


def test_down_with_a_dead_pid_signals_nothing_and_removes_the_file(data_dir: Path) -> None:
    record(data_dir, dead_pid(), started=time.time() - 100)
    code, out = down()
    assert code == 0, out
    assert "was not running" in out and "nothing was signalled" in out
    assert not runtime_file.path_for(data_dir).exists()


def test_down_with_a_recycled_pid_leaves_that_process_alone(
    data_dir: Path, spawn: list[subprocess.Popen[bytes]]
) -> None:
    """The pid now belongs to another process (it even looks like `up`): its start time differs."""
    other = start(spawn, FAKE_UP)
    record(data_dir, other.pid, started=psutil.Process(other.pid).create_time() - 30)
    code, out = down()
    assert code == 0, out
    assert "nothing was signalled" in out
    time.sleep(0.3)
    assert other.poll() is None, "a process that merely reuses the recorded pid was signalled"
    assert not runtime_file.path_for(data_dir).exists()


def test_down_never_signals_a_process_that_is_not_up(data_dir: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    """Same pid and start time, but not an `up` command (e.g. a program embedding a ControlPlane)."""
    other = start(spawn, SLEEPER)
    record(data_dir, other.pid)
    code, out = down()
    assert code == 1, out
    assert "not an `inferia-orch up`" in out
    time.sleep(0.3)
    assert other.poll() is None
    assert runtime_file.path_for(data_dir).exists(), "the file of a live control plane must stay"


def test_down_stops_the_up_process_the_file_names(data_dir: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    up = start(spawn, FAKE_UP)
    record(data_dir, up.pid, state="starting")  # also while it is still starting
    t0 = time.monotonic()
    code, out = down()
    assert code == 0, out
    assert "stopped" in out
    assert up.wait(5) != 0  # SIGTERM
    assert time.monotonic() - t0 < 5


def test_claim_refuses_a_data_dir_held_by_a_live_process(data_dir: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    holder = start(spawn, FAKE_UP)
    record(data_dir, holder.pid)
    with pytest.raises(runtime_file.AlreadyRunning, match=f"pid {holder.pid}"):
        runtime_file.claim(data_dir)
    holder.kill()
    holder.wait()
    assert runtime_file.claim(data_dir).pid == os.getpid()  # a dead holder's file is simply replaced


def test_up_refuses_to_start_on_a_data_dir_in_use(data_dir: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    holder = start(spawn, FAKE_UP)
    record(data_dir, holder.pid)
    res = CliRunner().invoke(cli.app, ["up"])
    assert res.exit_code == 1
    assert "already runs on the data dir" in res.output
    assert runtime_file.read(data_dir) is not None and runtime_file.read(data_dir).pid == holder.pid  # type: ignore[union-attr]


def test_remove_with_a_pid_keeps_a_successors_file(data_dir: Path) -> None:
    record(data_dir, os.getpid())
    runtime_file.remove(data_dir, pid=os.getpid() + 1)
    assert runtime_file.path_for(data_dir).exists()
    runtime_file.remove(data_dir, pid=os.getpid())
    assert not runtime_file.path_for(data_dir).exists()


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (["/x/.venv/bin/python", "/x/.venv/bin/inferia-orch", "up", "--detach"], True),
        (["/x/.venv/bin/inferia-orch", "up"], True),
        (["/usr/bin/python3", "-m", "controller.cli", "up", "--keep-nodes"], True),
        (["/x/.venv/bin/inferia-orch", "down"], False),
        (["/usr/bin/python3", "-m", "pytest", "tests/"], False),
        (["sleep", "up"], False),
        ([], False),
    ],
)
def test_is_up_command(cmdline: list[str], expected: bool) -> None:
    assert runtime_file.is_up_command(cmdline) is expected


def test_an_older_file_without_a_start_time_never_matches(data_dir: Path) -> None:
    runtime_file.path_for(data_dir).write_text(json.dumps({"pid": os.getpid(), "api_url": "http://127.0.0.1:8000"}))
    info = runtime_file.read(data_dir)
    assert info is not None and runtime_file.owner_alive(info, require_up_command=False) is None


def test_a_first_start_that_fails_forgets_the_token_it_never_showed(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Otherwise the next (successful) start finds a token file and never prints the admin token."""
    from controller.boot import ControlPlane, token_file
    from controller.config import load_settings
    from controller.services import EmbeddedPostgres

    def fail(self: EmbeddedPostgres) -> str:
        raise RuntimeError("postgres would not start")

    monkeypatch.setattr(EmbeddedPostgres, "start", fail)
    monkeypatch.delenv("INFERIA_API_TOKEN", raising=False)
    settings = load_settings()
    cp = ControlPlane(settings)
    with pytest.raises(RuntimeError, match="would not start"):
        cp.start()
    assert not token_file(settings).exists()
    cp.stop()
    assert not runtime_file.path_for(data_dir).exists()
