"""Rolling updates on the real control plane (issue 12): under continuous load through the proxy, an update of
3 replicas from arguments A to B fails no request and never runs more than 3 + max_surge replicas; a failing
update rolls back by itself with the old replicas untouched; the API refuses bad strategies by name."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from controller.boot import ControlPlane
from controller.client import Client, InvalidRequest, UpdateRolledBack
from tests.support import controlplane as cpl

ALIVE = ("provisioning", "ready", "unhealthy", "draining")


def _uid() -> str:
    return uuid.uuid4().hex[:6]


def _args(tag: str, *extra: str) -> list[str]:
    return [*cpl.fake_model("x")["args"], "--tag", tag, *extra]


@dataclass
class Load:
    """Several clients sending chat completions through the proxy for as long as it runs."""

    url: str
    model: str
    key: str
    clients: int = 4
    results: list[tuple[float, float, int, str]] = field(default_factory=list)  # (start, end, status, tag)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def _client(self, i: int) -> None:
        with httpx.Client(timeout=30) as h:
            n = 0
            while not self.stop.is_set():
                n += 1
                t0 = time.monotonic()
                try:
                    r = h.post(
                        self.url + "/v1/chat/completions",
                        json={"model": self.model, "messages": [{"role": "user", "content": f"c{i} r{n}"}]},
                        headers={"authorization": f"Bearer {self.key}"},
                    )
                    status, tag = r.status_code, (r.json().get("tag", "?") if r.status_code == 200 else r.text[:200])
                except httpx.HTTPError as exc:
                    status, tag = 0, repr(exc)
                self.results.append((t0, time.monotonic(), status, tag))
                time.sleep(0.02)

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.clients)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(40)

    def failed(self) -> list[tuple[float, float, int, str]]:
        return [r for r in self.results if r[2] != 200]


class Peak:
    """Samples the deployment's alive replicas every 0.1 s."""

    def __init__(self, cp: ControlPlane, dep_id: str) -> None:
        self.api, self.dep_id, self.peak = cpl.client(cp), dep_id, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            reps = self.api.get_deployment(self.dep_id)["replicas"]
            self.peak = max(self.peak, sum(1 for r in reps if r["state"] in ALIVE))
            time.sleep(0.1)

    def __enter__(self) -> Peak:
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join(10)
        self.api.close()


def _deploy(api: Client, replicas: int) -> tuple[str, dict[str, Any]]:
    name = f"roll-{_uid()}"
    api.register_model(name=name, engine="custom", args=_args("A"))
    pool = api.create_pool(f"pool-{_uid()}")
    dep = api.deploy(name, pool["name"], replicas=replicas)
    api.wait_deployment(dep["id"], timeout=120)
    return name, dep


def test_update_under_load_fails_no_request(control_plane: ControlPlane, api: Client) -> None:
    name, dep = _deploy(api, 3)
    old_nodes = {r["id"] for r in api.get_deployment(dep["id"])["replicas"]}
    with Load(control_plane.api_url, name, dep["inference_key"]) as load, Peak(control_plane, dep["id"]) as peak:
        time.sleep(2)
        t_start = time.monotonic()
        upd = api.update_deployment(dep["id"], args=_args("B"), max_surge=1, max_unavailable=0)
        assert upd["state"] == "updating" and upd["generation"] == 2 and upd["current_generation"] == 1
        assert upd["rollout"]["strategy"] == {"max_surge": 1, "max_unavailable": 0}
        done = api.wait_update(dep["id"], upd["generation"], timeout=180, poll=0.2)
        t_done = time.monotonic()
        time.sleep(3)
    assert done["state"] == "running" and done["current_generation"] == 2
    assert done["rollout"]["phase"] == "done" and done["rollout"]["updated"] == 3 and done["rollout"]["old"] == 0
    new_nodes = {r["id"] for r in done["replicas"] if r["state"] == "ready"}
    assert len(new_nodes) == 3 and not new_nodes & old_nodes
    assert all(r["generation"] == 2 for r in done["replicas"] if r["state"] == "ready")
    assert load.failed() == [], load.failed()[:5]
    assert peak.peak <= 4, peak.peak  # never more than N + max_surge alive
    after = [r for r in load.results if r[0] > t_done + 1.0]
    assert after and all(r[3] == "B" for r in after)  # every answer after the update: the new generation
    during = [r for r in load.results if t_start < r[0] < t_done]
    print(
        f"\nFIGURES rollout_3_replicas_s={t_done - t_start:.1f} requests_during={len(during)} "
        f"failed=0 peak_alive={peak.peak}"
    )
    kinds = [e["kind"] for e in api.events(entity_id=dep["id"], limit=50)["items"]]
    assert "deployment.update" in kinds and "deployment.updated" in kinds
    # on demand: back to the previous generation (a new generation with the first one's spec)
    back = api.rollback_deployment(dep["id"])
    assert back["generation"] == 3 and back["state"] == "updating"
    done = api.wait_update(dep["id"], 3, timeout=180, poll=0.2)
    r = httpx.post(
        control_plane.api_url + "/v1/chat/completions",
        json={"model": name, "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {dep['inference_key']}"},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["tag"] == "A"
    api.delete_deployment(dep["id"])


def test_failing_update_rolls_back_by_itself(control_plane: ControlPlane, api: Client) -> None:
    name, dep = _deploy(api, 3)
    old_nodes = {r["id"] for r in api.get_deployment(dep["id"])["replicas"]}
    with Load(control_plane.api_url, name, dep["inference_key"]) as load, Peak(control_plane, dep["id"]) as peak:
        upd = api.update_deployment(dep["id"], args=_args("B", "--no-such-flag"))  # the engine exits at once
        with pytest.raises(UpdateRolledBack) as info:
            api.wait_update(dep["id"], upd["generation"], timeout=180, poll=0.2)
        time.sleep(1)
    d = info.value.deployment
    assert d["state"] == "running" and d["generation"] == 1 and d["current_generation"] == 1
    assert "new replicas failed" in (d["rollout"]["last_failure"] or "")
    assert d["rollout"]["failures"] == 2  # the count that rolled it back (in Postgres: actors/rollout_progress.py)
    now = api.get_deployment(dep["id"])
    assert {r["id"] for r in now["replicas"] if r["state"] == "ready"} == old_nodes  # old replicas untouched
    assert load.failed() == [], load.failed()[:5]
    assert all(r[3] == "A" for r in load.results)
    assert peak.peak <= 4
    kinds = [e["kind"] for e in api.events(entity_id=dep["id"], limit=50)["items"]]
    assert "deployment.rollback" in kinds and "deployment.rolled_back" in kinds
    api.delete_deployment(dep["id"])


def test_update_input_is_checked(control_plane: ControlPlane, api: Client) -> None:
    _name, dep = _deploy(api, 1)
    with pytest.raises(InvalidRequest) as info:
        api.update_deployment(dep["id"], args=_args("B"), max_surge=0, max_unavailable=0)
    assert info.value.field == "strategy"
    with pytest.raises(InvalidRequest) as info:
        api.update_deployment(dep["id"], args=[])  # a custom engine needs its command line
    assert info.value.field == "args"
    with pytest.raises(Exception) as nf:
        api.update_deployment(dep["id"], model="no-such-model")
    assert getattr(nf.value, "status", None) == 404 and getattr(nf.value, "field", None) == "model"
    r = httpx.patch(
        control_plane.api_url + f"/v1/deployments/{dep['id']}",
        json={"replicas": 1, "strategy": {"max_surge": 2}},
        headers={"authorization": f"Bearer {control_plane.api_token}"},
    )
    assert r.status_code == 422 and "strategy" in r.json()["message"]
    with pytest.raises(Exception) as nothing:
        api.rollback_deployment(dep["id"])  # no previous generation yet
    assert getattr(nothing.value, "status", None) == 409
    same = api.update_deployment(dep["id"], args=_args("A"))  # what runs already: no new generation
    assert same["generation"] == 1 and same["state"] == "running"
    api.delete_deployment(dep["id"])
