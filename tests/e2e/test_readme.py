"""The README's five-minute walk-through, run as written (issue 14 item 8), so the README cannot rot.

The commands are read from README.md itself: every ```bash block between "## Five-minute walk-through" and
the next "## " heading, one logical line (backslash continuations joined) at a time, in the repository root,
with a fresh HOME (so `~/.inferia` is a new, empty data dir) and no INFERIA_* settings but free ports. The
control plane is started as the walk-through says (`.venv/bin/inferia-orch up --detach`), with the defaults
a new user gets (the Ray dashboard included). Filled in, and nothing else changed: the values `deploy`
prints (`ik_...`, `dep-...`), a node id (`<node-id>`), the current routing version (`<version>`), and the
port 8000. `routes --watch`, which the README runs beside the next command ("in another terminal"), runs in
the background until that command has changed the table. Variables persist from one command to the next
(`set -a`, the state re-sourced), as in one terminal.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from controller import runtime_file
from controller.services import free_port
from tests.support import controlplane as cpl

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
UP = ".venv/bin/inferia-orch up --detach"


def walkthrough_commands(text: str) -> list[str]:
    section = text.split("## Five-minute walk-through", 1)[1]
    section = re.split(r"\n## ", section, maxsplit=1)[0]
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        logical = re.sub(r"\\\n\s*", " ", block)
        for line in logical.splitlines():
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                commands.append(stripped)
    return commands


@dataclass
class Shell:
    """One terminal: commands run by bash in the repository root, variables kept between them."""

    env: dict[str, str]
    state: Path

    def script(self, command: str) -> str:
        return f"set -a\nsource {shlex.quote(str(self.state))}\n{command}\n"

    def run(self, command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        save = f"__rc=$?; declare -px > {shlex.quote(str(self.state))}.new 2>/dev/null; exit $__rc"
        p = subprocess.run(
            ["bash", "-c", self.script(command) + save],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        new = self.state.with_name(self.state.name + ".new")
        if new.exists():  # readonly bash variables cannot be re-declared: keep only what the commands set
            keep = [x for x in new.read_text().splitlines() if not x.startswith(("declare -rx", "declare -ar"))]
            self.state.write_text("\n".join(keep) + "\n")
        return p

    def background(self, command: str, out: Path) -> subprocess.Popen[bytes]:
        with open(out, "wb") as f:
            return subprocess.Popen(
                ["bash", "-c", self.script(command)],
                cwd=ROOT,
                env=self.env,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


@pytest.fixture()
def shell(tmp_path: Path) -> Iterator[Shell]:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFERIA_", "RAY_ADDRESS", "POSTGRES_", "REDIS_"))}
    env.update(
        HOME=str(home),
        INFERIA_API_PORT=str(free_port()),
        INFERIA_DATA_PORT=str(free_port()),
        INFERIA_DASHBOARD_PORT=str(free_port()),  # the default dashboard, on a port no other test uses
        COLUMNS="200",
    )
    state = tmp_path / "state.sh"
    state.write_text("")
    sh = Shell(env, state)
    data_dir = home / ".inferia"
    try:
        yield sh
    finally:
        found = runtime_file.live(data_dir)
        sh.run(".venv/bin/inferia-orch down", timeout=180)
        if found is not None and psutil.pid_exists(found[0].pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(found[0].pid, signal.SIGKILL)
        cpl.kill_all(cpl.processes_under(data_dir))


def test_readme_walkthrough_runs_as_written(shell: Shell, tmp_path: Path) -> None:
    text = README.read_text()
    assert f"`{UP}`" in text, "the walk-through no longer says how to start the control plane in the background"
    commands = walkthrough_commands(text)
    assert len(commands) >= 15, commands
    port = shell.env["INFERIA_API_PORT"]
    data_dir = Path(shell.env["HOME"]) / ".inferia"

    # the start, as a new user sees it
    t0 = time.monotonic()
    up = shell.run(UP, timeout=400)
    log = (data_dir / "up.log").read_text(errors="replace") if (data_dir / "up.log").exists() else ""
    if up.returncode != 0 and "timed out during startup" in log:  # Ray's fixed raylet wait on a loaded machine
        up = shell.run(UP, timeout=400)
    assert up.returncode == 0, up.stdout + up.stderr
    printed = up.stdout.splitlines()
    before_token = next(i for i, line in enumerate(printed) if "admin API token" in line)
    assert before_token <= 2, up.stdout  # the quiet start-up: the token is not drowned in logs
    assert re.search(r"^\s+it_\S+$", up.stdout, flags=re.M), up.stdout
    info = runtime_file.read(data_dir)
    assert info is not None and info.dashboard_url, up.stdout
    for url in (f"http://127.0.0.1:{port}/docs", f"http://127.0.0.1:{port}/ui", info.dashboard_url):
        assert url in up.stdout, up.stdout
    assert httpx.get(info.dashboard_url + "/api/version", timeout=10, trust_env=False).status_code == 200
    up_s = time.monotonic() - t0

    values: dict[str, str] = {}
    outputs: dict[str, str] = {}
    watcher: subprocess.Popen[bytes] | None = None
    watch_out = tmp_path / "watch.out"
    for raw in commands:
        cmd = raw.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        for placeholder, key in (("ik_...", "key"), ("dep-...", "dep"), ("<node-id>", "node"), ("<version>", "ver")):
            if placeholder in cmd:
                if key == "node":
                    values["node"] = node_of(data_dir)
                if key == "ver":
                    values["ver"] = str(routing_version(data_dir, port))
                assert key in values, f"{placeholder} in {raw!r} before deploy printed it"
                cmd = cmd.replace(placeholder, values[key])
        if "--watch" in cmd:
            watcher = shell.background(cmd, watch_out)
            time.sleep(3)  # its first table printed
            continue
        res = shell.run(cmd)
        out = res.stdout + res.stderr
        assert res.returncode == 0, f"{raw}\n-> {res.returncode}\n{out}"
        outputs[raw] = out
        if " deploy " in f" {cmd}":
            key_m = re.search(r"inference key: (ik_[A-Za-z0-9_\-]+)", out)
            dep_m = re.search(r"deployment (dep-[0-9a-f]+)", out)
            assert key_m and dep_m and "running (2/2 replicas ready)" in out, out
            values.update(key=key_m.group(1), dep=dep_m.group(1))
        if watcher is not None:  # the command "in another terminal" ran: a new version must be printed
            cpl.wait_for(lambda: watch_out.read_text().count("Routing table v") >= 2, 30, what="a new version")
            os.killpg(watcher.pid, signal.SIGINT)
            watcher.wait(10)
            watcher = None

    def out_of(prefix: str) -> str:
        return next(v for k, v in outputs.items() if k.startswith(prefix))

    assert "smollm2" in out_of("inferia-orch models list")
    assert '"choices"' in out_of("curl -s http://127.0.0.1:8000/v1/chat/completions")
    assert "running" in out_of("inferia-orch status")
    assert out_of("inferia-orch logs").strip()
    assert "Routing table v" in out_of("inferia-orch routes")
    assert "HTTP/1.1 200" in out_of("curl -si http://127.0.0.1:8000/v1/routing-table") and "etag" in (
        out_of("curl -si http://127.0.0.1:8000/v1/routing-table").lower()
    )
    assert "HTTP/1.1 304" in out_of('curl -si "http://127.0.0.1:8000/v1/routing-table?wait=1')
    assert "deleted" in out_of("inferia-orch deployments delete")
    assert "stopped" in out_of("inferia-orch down")
    assert runtime_file.read(data_dir) is None
    print(f"\nFIGURES readme_up_s={up_s:.1f} lines_before_token={before_token} walkthrough_commands={len(commands)}")


def _api(data_dir: Path, port: str) -> httpx.Client:
    token = (data_dir / "api_token").read_text().strip()
    return httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, trust_env=False
    )


def node_of(data_dir: Path) -> str:
    nodes = sorted(p.name for p in (data_dir / "nodes").glob("*/node-*"))
    assert nodes, "no local node to read logs of"
    return nodes[0]


def routing_version(data_dir: Path, port: str) -> int:
    with _api(data_dir, port) as c:
        return int(c.get("/v1/routing-table").json()["version"])
