"""The control plane outgrows one machine: a Ray cluster of a head and two workers, pool actors spread over
the nodes, a worker lost while a scale-up is in flight. The scenario (tests/support/ray_cluster_scenario.py)
runs in its own process: this test process already owns a Ray session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 180


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM lets the scenario tear down (control plane, cluster); SIGKILL whatever is left."""
    for sig, wait_s in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def test_worker_node_lost_pool_actors_restart_elsewhere_nothing_lost(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.ray_cluster_scenario", "--data-dir", str(tmp_path / "data")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a timeout stops the scenario and all it started
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        out, _ = proc.communicate()
        raise AssertionError(f"scenario did not finish within {TIMEOUT_S}s; output tail:\n{out[-6000:]}") from None
    lines = out.splitlines()
    figures_line = next((line for line in reversed(lines) if line.startswith("FIGURES ")), None)
    failure = next((line for line in lines if line.startswith("SCENARIO FAILED")), None)
    assert proc.returncode == 0 and failure is None and figures_line is not None, (
        f"rc={proc.returncode} {failure or ''}\noutput tail:\n{out[-6000:]}"
    )
    figures = json.loads(figures_line.removeprefix("FIGURES "))
    print("\n" + figures_line)
    assert figures["ok"] is True
    assert figures["affected_pools"] >= 1 and figures["in_flight_at_kill"] >= 1
    assert figures["creates"] == figures["instances"] + figures["deletes"]
