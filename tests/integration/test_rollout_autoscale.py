"""A rolling update of an autoscaled deployment (issue 12 with issue 11): the autoscaler keeps setting the target
while the update runs and the rolling-update planner follows it, so the load raised mid-update makes a third
replica, of the new generation; no request fails; the update finishes with every replica on the new generation.

Fake engines with 2 slots and a 300 ms service time (like test_autoscaling.py); the new generation's engines take
2 s to open their port, so the target rises while old and new replicas are both alive."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import httpx

from controller.boot import ControlPlane
from controller.client import Client
from tests.support import controlplane as cpl

POLICY = {
    "min_replicas": 1,
    "max_replicas": 3,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 1,
    "downscale_delay_s": 300,  # no step down while the test runs: only the rise is under test
}


def _args(tag: str, *extra: str) -> list[str]:
    return [*cpl.fake_model("x")["args"], "--slots", "2", "--service-ms", "300", "--tag", tag, *extra]


class Load:
    """Threads sending chat completions back to back; each answer's (time, status, tag) is kept."""

    def __init__(self, url: str, key: str, model: str) -> None:
        self.url, self.key, self.model = url, key, model
        self.results: list[tuple[float, int, str]] = []
        self._threads: list[tuple[threading.Thread, threading.Event]] = []

    def _run(self, stop: threading.Event) -> None:
        with httpx.Client(timeout=120) as c:
            while not stop.is_set():
                try:
                    r = c.post(
                        self.url + "/v1/chat/completions",
                        json={"model": self.model, "messages": [{"role": "user", "content": "load"}]},
                        headers={"authorization": f"Bearer {self.key}"},
                    )
                    tag = r.json().get("tag", "?") if r.status_code == 200 else r.text[:300]
                    self.results.append((time.monotonic(), r.status_code, tag))
                except httpx.HTTPError as exc:
                    self.results.append((time.monotonic(), 0, repr(exc)))

    def set_workers(self, n: int) -> None:
        while len(self._threads) > n:
            t, stop = self._threads.pop()
            stop.set()
            t.join(60)
        while len(self._threads) < n:
            stop = threading.Event()
            t = threading.Thread(target=self._run, args=(stop,), daemon=True)
            t.start()
            self._threads.append((t, stop))

    def failed(self) -> list[tuple[float, int, str]]:
        return [r for r in self.results if r[1] != 200]


def _events(api: Client, dep_id: str) -> list[dict[str, Any]]:
    return sorted(api.events(entity_id=dep_id, limit=200)["items"], key=lambda e: e["id"])


def test_update_with_autoscaling_follows_the_target_onto_the_new_generation(
    control_plane: ControlPlane, api: Client
) -> None:
    name = f"rauto-{uuid.uuid4().hex[:6]}"
    api.register_model(name=name, engine="custom", args=_args("A"))
    pool = api.create_pool(f"pool-{uuid.uuid4().hex[:6]}")
    dep = api.deploy(name, pool["name"], replicas=None, autoscaling=POLICY)
    dep_id, key = dep["id"], dep["inference_key"]
    api.wait_deployment(dep_id, timeout=60)
    load = Load(control_plane.api_url, key, name)
    try:
        # 4 clients on 2 slots per replica, 2 in flight per replica wanted: 2 replicas
        load.set_workers(4)
        cpl.wait_for(lambda: api.get_deployment(dep_id)["desired_replicas"] == 2, 30, what="target 2")
        cpl.wait_for(lambda: api.get_deployment(dep_id)["ready_replicas"] == 2, 60, what="2 replicas ready")
        upd = api.update_deployment(dep_id, args=_args("B", "--startup-s", "2"), max_surge=1, max_unavailable=0)
        assert upd["state"] == "updating" and upd["generation"] == 2
        t_update = time.monotonic()
        load.set_workers(6)  # mid-update: 3 replicas wanted
        done = api.wait_update(dep_id, 2, timeout=150, poll=0.2)
        t_done = time.monotonic()
        cpl.wait_for(lambda: api.get_deployment(dep_id)["ready_replicas"] == 3, 60, what="3 replicas ready")
        time.sleep(2)
    finally:
        load.set_workers(0)
    assert done["state"] == "running" and done["current_generation"] == 2, done
    final = api.get_deployment(dep_id)
    assert final["desired_replicas"] == 3 and final["generation"] == 2
    ready = [r for r in final["replicas"] if r["state"] == "ready"]
    assert len(ready) == 3 and all(r["generation"] == 2 for r in ready), final["replicas"]
    assert not [r for r in final["replicas"] if r["state"] in ("provisioning", "draining")]
    assert load.results and load.failed() == [], load.failed()[:5]
    assert all(tag == "B" for at, _s, tag in load.results if at > t_done + 1.0)
    assert {tag for at, _s, tag in load.results if at < t_update} == {"A"}
    # the autoscaler raised the target to 3 while the roll-out ran, and the update finished on it
    ev = _events(api, dep_id)
    start = next(i for i, e in enumerate(ev) if e["kind"] == "deployment.update")
    end = next(i for i, e in enumerate(ev) if e["kind"] == "deployment.updated")
    rises = [e["data"] for e in ev[start:end] if e["kind"] == "deployment.autoscaled"]
    assert any(x["previous"] == 2 and x["desired"] == 3 for x in rises), [e["kind"] for e in ev]
    print(f"\nFIGURES rollout_autoscaled_2_to_3_s={t_done - t_update:.1f} requests={len(load.results)} failed=0")
    api.delete_deployment(dep_id)
