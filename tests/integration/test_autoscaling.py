"""Autoscaling end to end (issue 11): a fake engine with K slots and a service time that exposes vLLM's
/metrics; a request at zero is held and answered; a load ramp makes 1 -> 3 replicas, back to 1 after the
downscale delay, then 0; no request fails during the whole ramp. Also the policy's API (422s, PATCH)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from controller.boot import ControlPlane
from controller.client import Client, InferiaError
from tests.support import controlplane as cpl

POLICY = {
    "min_replicas": 0,
    "max_replicas": 3,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 1,
    "downscale_delay_s": 4,
    "scale_to_zero_after_s": 8,
}


def _slow_model(name: str, slots: int = 2, service_ms: int = 300) -> dict[str, Any]:
    m = cpl.fake_model(name)
    m["args"] = [*m["args"], "--slots", str(slots), "--service-ms", str(service_ms)]
    return m


def _chat(url: str, key: str, model: str, text: str = "hi", timeout: float = 150) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": text}]},
        headers={"authorization": f"Bearer {key}"},
        timeout=timeout,
    )


def _routed(api: Client, model: str) -> int:
    return len((api.routing_table() or {}).get("models", {}).get(model, []))


class Load:
    """`workers` threads sending chat requests back to back; every status is kept."""

    def __init__(self, url: str, key: str, model: str) -> None:
        self.url, self.key, self.model = url, key, model
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self._threads: list[tuple[threading.Thread, threading.Event]] = []

    def _run(self, stop: threading.Event) -> None:
        with httpx.Client(timeout=150) as c:
            while not stop.is_set():
                try:
                    r = c.post(
                        self.url + "/v1/chat/completions",
                        json={"model": self.model, "messages": [{"role": "user", "content": "load"}]},
                        headers={"authorization": f"Bearer {self.key}"},
                    )
                    self.statuses.append(r.status_code)
                    if r.status_code != 200:
                        self.errors.append(f"{r.status_code}: {r.text[:300]}")
                except httpx.HTTPError as exc:
                    self.statuses.append(0)
                    self.errors.append(f"{type(exc).__name__}: {exc}")

    def set_workers(self, n: int) -> None:
        # every extra worker is told to stop first, then joined: the load drops at once, not one request
        # after another (each worker ends its request in flight)
        extra = [self._threads.pop() for _ in range(max(0, len(self._threads) - n))]
        for _, stop in extra:
            stop.set()
        for t, _ in extra:
            t.join(60)
        while len(self._threads) < n:
            stop = threading.Event()
            t = threading.Thread(target=self._run, args=(stop,), daemon=True)
            t.start()
            self._threads.append((t, stop))


def test_ramp_from_zero_up_to_three_down_to_one_then_zero_without_a_failed_request(
    control_plane: ControlPlane, api: Client
) -> None:
    name = f"auto-{uuid.uuid4().hex[:6]}"
    api.register_model(**_slow_model(name))
    pool = api.create_pool(f"pool-{uuid.uuid4().hex[:6]}")
    dep = api.deploy(name, pool["name"], replicas=None, autoscaling=POLICY)
    dep_id, key, url = dep["id"], dep["inference_key"], control_plane.api_url
    assert dep["desired_replicas"] == 0 and dep["autoscaling"]["max_replicas"] == 3
    assert api.wait_deployment(dep_id, timeout=30)["ready_replicas"] == 0  # running at zero: nothing to start

    # a request at zero is held, wakes the autoscaler and is answered once the first replica is routed
    t0 = time.monotonic()
    r = _chat(url, key, name, "first")
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "echo: first"
    cold_s = time.monotonic() - t0
    d = api.get_deployment(dep_id)
    assert d["desired_replicas"] == 1 and d["ready_replicas"] == 1
    woke = api.events(entity_id=dep_id, kind="deployment.autoscaled")["items"]
    assert woke and woke[-1]["data"]["previous"] == 0 and woke[-1]["data"]["desired"] == 1
    assert woke[-1]["data"]["proxy_queued"] >= 1, woke[-1]  # the held request was the demand

    load = Load(url, key, name)
    try:
        # 6 clients on 2 slots per replica, target 2 in flight per replica: 3 replicas (panic: at once)
        load.set_workers(6)
        cpl.wait_for(lambda: api.get_deployment(dep_id)["desired_replicas"] == 3, 30, what="target 3")
        cpl.wait_for(lambda: _routed(api, name) == 3, 90, what="3 replicas routed")
        # the engines' own queue arrives in the heartbeats (vLLM series from the fake engine's /metrics)
        cpl.wait_for(
            lambda: any("engine_running" in (r["engine"] or {}) for r in api.get_deployment(dep_id)["replicas"]),
            15,
            what="engine metrics in heartbeats",
        )
        d = api.get_deployment(dep_id)
        assert d["autoscaler"] and d["autoscaler"]["desired"] == 3, d["autoscaler"]

        # one client: back to 1, one step per downscale delay, draining (no request cut)
        t_low = time.monotonic()  # before: the load starts dropping as soon as the workers are told to stop
        load.set_workers(1)
        cpl.wait_for(lambda: api.get_deployment(dep_id)["desired_replicas"] == 2, 30, what="target 2")
        first_step_s = time.monotonic() - t_low
        cpl.wait_for(lambda: api.get_deployment(dep_id)["desired_replicas"] == 1, 30, what="target 1")
        assert first_step_s >= POLICY["downscale_delay_s"] - 0.5, first_step_s  # not before the delay
        cpl.wait_for(lambda: _routed(api, name) == 1, 60, what="1 replica routed")
        downs = [
            e["data"]
            for e in api.events(entity_id=dep_id, kind="deployment.autoscaled", limit=50)["items"]
            if e["data"]["desired"] < e["data"]["previous"]
        ]
        assert {(x["previous"], x["desired"]) for x in downs} >= {(3, 2), (2, 1)}, downs
    finally:
        load.set_workers(0)
    assert load.statuses and not load.errors, load.errors[:5]
    assert len(load.statuses) > 20

    # idle: zero after scale_to_zero_after_s
    t_idle = time.monotonic()
    cpl.wait_for(lambda: api.get_deployment(dep_id)["desired_replicas"] == 0, 40, what="target 0")
    assert time.monotonic() - t_idle >= POLICY["scale_to_zero_after_s"] - 2
    cpl.wait_for(lambda: _routed(api, name) == 0, 30, what="no replica routed")
    assert "zero" in api.get_deployment(dep_id)["autoscaler"]["reason"]

    # and from zero again, streamed this time: held, then relayed
    with httpx.stream(
        "POST",
        url + "/v1/chat/completions",
        json={"model": name, "stream": True, "messages": [{"role": "user", "content": "again"}]},
        headers={"authorization": f"Bearer {key}"},
        timeout=150,
    ) as resp:
        body = b"".join(resp.iter_bytes())
    assert resp.status_code == 200 and b"again" in body and b"[DONE]" in body
    print(f"\ncold start through the hold queue: {cold_s:.2f} s; first step down after {first_step_s:.1f} s")
    api.delete_deployment(dep_id)


def test_policy_api_validation_patch_and_no_hold_without_a_policy(control_plane: ControlPlane, api: Client) -> None:
    name = f"pol-{uuid.uuid4().hex[:6]}"
    api.register_model(**cpl.fake_model(name))
    pool = api.create_pool(f"pool-{uuid.uuid4().hex[:6]}")

    def refused(call: Any) -> InferiaError:
        with pytest.raises(InferiaError) as info:
            call()
        assert info.value.status == 422, info.value
        return info.value

    e = refused(lambda: api.deploy(name, pool["name"], autoscaling={"min_replicas": 3, "max_replicas": 2}))
    assert e.field == "autoscaling.min_replicas" and "max_replicas" in e.message
    e = refused(lambda: api.deploy(name, pool["name"], autoscaling={"min_replicas": 0}))
    assert e.field == "autoscaling.scale_to_zero_after_s"
    e = refused(lambda: api.deploy(name, pool["name"], replicas=5, autoscaling={"max_replicas": 4}))
    assert e.field == "replicas"
    e = refused(lambda: api.deploy(name, pool["name"], autoscaling={"target_ongoing_requests": 0}))
    assert e.field == "autoscaling.target_ongoing_requests"
    e = refused(lambda: api.deploy(name, pool["name"], autoscaling={"max_replicass": 4}))
    assert e.field == "autoscaling.max_replicass"

    # a fixed deployment at zero: nothing will come, so a request is refused at once with the reason
    dep = api.deploy(name, pool["name"], replicas=0)
    assert dep["autoscaling"] is None and dep["autoscaler"] is None
    t0 = time.monotonic()
    r = _chat(control_plane.api_url, dep["inference_key"], name, timeout=30)
    assert r.status_code == 503 and time.monotonic() - t0 < 5, r.text
    assert r.headers.get("retry-after") and "no autoscaling policy" in r.json()["error"]["message"]

    # PATCH: set (defaults fill in), change one field (the others stay), refuse a bad merge, remove
    d = api.set_autoscaling(dep["id"], {"max_replicas": 2})
    assert d["autoscaling"]["max_replicas"] == 2 and d["autoscaling"]["min_replicas"] == 1
    assert d["desired_replicas"] == 1  # moved into the bounds
    d = api.set_autoscaling(dep["id"], {"upscale_delay_s": 7})
    assert d["autoscaling"]["upscale_delay_s"] == 7 and d["autoscaling"]["max_replicas"] == 2
    e = refused(lambda: api.set_autoscaling(dep["id"], {"min_replicas": 3}))
    assert e.field == "autoscaling.min_replicas"
    e = refused(lambda: api.scale_deployment(dep["id"], 5))
    assert e.field == "replicas"
    d = api.set_autoscaling(dep["id"], None)
    assert d["autoscaling"] is None and d["desired_replicas"] == 1
    kinds = {e["kind"] for e in api.events(entity_id=dep["id"])["items"]}
    assert {"deployment.autoscaling_set", "deployment.autoscaling_removed"} <= kinds
    api.delete_deployment(dep["id"])
