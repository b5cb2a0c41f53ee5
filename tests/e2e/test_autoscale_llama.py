"""End to end (issue 11): the real SmolLM2 model on llama.cpp's llama-server, deployed at zero replicas with
an autoscaling policy, answered from zero through the proxy with the official OpenAI Python client; the
engine's own queue (llama-server --metrics) reaches the heartbeats."""

from __future__ import annotations

import time
import uuid

from openai import OpenAI

from controller.boot import ControlPlane
from controller.client import Client
from tests.e2e.test_end_to_end import gguf_path
from tests.support import controlplane as cpl


def test_smollm2_from_zero_through_the_openai_client(control_plane: ControlPlane, api: Client) -> None:
    name = f"smol-{uuid.uuid4().hex[:6]}"
    # llama-server's options: -t/--threads, -c/--ctx-size, --parallel slots (continuous batching)
    api.register_model(name, "llamacpp", source=gguf_path(), args=["-t", "1", "-c", "1024", "--parallel", "2"])
    pool = api.create_pool(f"pool-{uuid.uuid4().hex[:6]}")
    policy = {"min_replicas": 0, "max_replicas": 2, "target_ongoing_requests": 2, "scale_to_zero_after_s": 60}
    dep = api.deploy(name, pool["name"], replicas=None, autoscaling=policy)
    assert dep["desired_replicas"] == 0
    client = OpenAI(base_url=control_plane.api_url + "/v1", api_key=dep["inference_key"], timeout=240, max_retries=0)
    try:
        t0 = time.monotonic()
        r = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
        )
        cold_s = time.monotonic() - t0
        assert r.choices[0].message.content, r
        assert api.get_deployment(dep["id"])["desired_replicas"] == 1
        woke = api.events(entity_id=dep["id"], kind="deployment.autoscaled")["items"]
        assert woke and woke[-1]["data"]["previous"] == 0 and woke[-1]["data"]["proxy_queued"] >= 1, woke
        # llama-server's own queue arrives with the heartbeats (llamacpp:requests_processing/_deferred)
        cpl.wait_for(
            lambda: any("engine_running" in (x["engine"] or {}) for x in api.get_deployment(dep["id"])["replicas"]),
            30,
            what="llama-server metrics in the heartbeats",
        )
        stream = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Count to three."}], max_tokens=12, stream=True
        )
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
        assert "".join(pieces)
        print(f"\nSmolLM2 on llama-server from zero: first answer after {cold_s:.1f} s")
    finally:
        api.delete_deployment(dep["id"])
