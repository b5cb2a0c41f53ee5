"""A rolling update survives a crash of the whole control plane (issue 12): the target generation is in Postgres
and every replica row carries its generation, so after `up` on the same data dir the update resumes from the
observed replicas and finishes, every instance runs the new arguments, and nothing leaks (invariants.py).

Like test_fault_restart.py: one `up` process in its own process group on the instant test provider, SIGKILLed
with all of its Ray session, PostgreSQL and Redis in the middle of the update."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from tests.support import controlplane as cpl
from tests.support import instant
from tests.support.crash import ControlPlaneProcess
from tests.support.invariants import wait_converged

REPLICAS = 4
LATENCY_S = 1.0


@pytest.fixture()
def cp_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    cp = ControlPlaneProcess(tmp_path_factory.mktemp("rollcrash"))
    try:
        yield cp
    finally:
        cp.kill_everything()


def test_update_resumes_after_a_crash(cp_proc: ControlPlaneProcess) -> None:
    data_dir = cp_proc.data_dir
    cp_proc.start()
    tag = uuid.uuid4().hex[:6]
    model = cpl.fake_model(f"rc-{tag}")
    with cp_proc.client() as api:
        api.register_model(**model)
        pool = api.create_pool(
            f"rc-{tag}",
            provider="instant",
            max_nodes=REPLICAS + 2,
            provider_config={"latency_s": LATENCY_S, "deprovision_latency_s": 0.2},
        )
        pool_id = pool["id"]
        dep_id = api.deploy(f"rc-{tag}", pool["name"], replicas=REPLICAS)["id"]
        wait_converged(api, data_dir, [pool_id], [dep_id], timeout=90)
        # every instance up is not yet `running` (the next round says so); an update waits for it (found by CI)
        api.wait_deployment(dep_id, timeout=60, poll=0.1)
        upd = api.update_deployment(dep_id, args=[*model["args"], "--tag", "B"], max_surge=1)
        assert upd["generation"] == 2

        def halfway() -> bool:
            roll = api.get_deployment(dep_id)["rollout"] or {}
            return 1 <= int(roll.get("ready") or 0) < REPLICAS

        cpl.wait_for(halfway, 90, every=0.05, what="the update half done")
    cp_proc.crash()

    cp_proc.start()
    with cp_proc.client() as api:
        done = api.wait_update(dep_id, 2, timeout=180, poll=0.25)
        assert done["state"] == "running" and done["current_generation"] == 2
        assert done["rollout"]["phase"] == "done" and done["rollout"]["last_failure"] is None
        wait_converged(api, data_dir, [pool_id], [dep_id], timeout=60)
        live = instant.instances(data_dir, pool_id)
        assert len(live) == REPLICAS
        assert all(rec["args"][-2:] == ["--tag", "B"] for rec in live.values()), live
        reps = [r for r in done["replicas"] if r["state"] == "ready"]
        assert len(reps) == REPLICAS and all(r["generation"] == 2 for r in reps)
        # a few reconcile rounds later nothing more was created: the update did not start over
        creates = sum(1 for op, _ in instant.journal(data_dir, pool_id) if op == "create")
        time.sleep(2.0)
        assert sum(1 for op, _ in instant.journal(data_dir, pool_id) if op == "create") == creates
        assert creates <= 2 * REPLICAS + 1, creates  # N old + N new (+1 re-provisioned after the crash)
