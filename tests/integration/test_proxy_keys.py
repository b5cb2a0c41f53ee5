"""The inference proxy through the real control plane: two deployments of one model, each key served only by
its own replicas under concurrent load (both ports), the admin token over all of them, the official `openai`
client (answers, streams, models, errors), and a killed engine failed over without an error."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from controller.boot import ControlPlane
from controller.client import Client
from tests.support import controlplane as cpl

FAST_ENGINE = str(Path(cpl.ROOT) / "tests" / "support" / "fast_engine.py")


def _model(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "engine": "custom",
        "args": [sys.executable, FAST_ENGINE, "--port", "{port}", "--model", "{model}"],
    }


@pytest.fixture()
def two_deployments(control_plane: ControlPlane, api: Client) -> Any:
    model, other = f"m-{uuid.uuid4().hex[:6]}", f"o-{uuid.uuid4().hex[:6]}"
    api.register_model(**_model(model))
    api.register_model(**_model(other))
    pool = api.create_pool(f"pool-{uuid.uuid4().hex[:6]}")
    a = api.deploy(model, pool["name"], replicas=2)
    b = api.deploy(model, pool["name"], replicas=1)
    o = api.deploy(other, pool["name"], replicas=1)
    for d in (a, b, o):
        api.wait_deployment(d["id"], timeout=120)
    cpl.wait_for(
        lambda: (t := api.routing_table()) and len(t["models"].get(model, [])) == 3 and t["models"].get(other),
        30,
        what="3 routes of the model and 1 of the other",
    )
    nodes = {d["id"]: {r["id"] for r in api.get_deployment(d["id"])["replicas"]} for d in (a, b)}
    yield {"model": model, "other": other, "a": a, "b": b, "o": o, "nodes": nodes}
    for d in (a, b, o):
        api.delete_deployment(d["id"])
    cpl.wait_for(lambda: not any(d["id"] in (a["id"], b["id"], o["id"]) for d in api.list_deployments()), 60)


async def _load(base: str, model: str, keys: dict[str, str], per_key: int) -> list[tuple[str, int, str]]:
    """per_key concurrent chat requests with each key: (deployment, status, x-inferia-node)."""
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=60, trust_env=False, limits=limits) as c:

        async def one(dep: str, key: str) -> tuple[str, int, str]:
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            r = await c.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
            return dep, r.status_code, r.headers.get("x-inferia-node", "")

        jobs = [one(dep, key) for dep, key in keys.items() for _ in range(per_key)]
        return list(await asyncio.gather(*jobs))


def test_each_key_is_served_only_by_its_own_deployment(control_plane: ControlPlane, two_deployments: Any) -> None:
    t = two_deployments
    a, b, nodes = t["a"], t["b"], t["nodes"]
    keys = {a["id"]: a["inference_key"], b["id"]: b["inference_key"]}
    for base, per_key in ((control_plane.data_url, 60), (control_plane.api_url, 8)):
        seen = asyncio.run(_load(base, t["model"], keys, per_key))
        for dep, status, node in seen:
            assert status == 200, (base, dep, status)
            assert node in nodes[dep], (base, dep, node, nodes)
    seen = asyncio.run(_load(control_plane.data_url, t["model"], keys, 60))
    assert {n for d, _, n in seen if d == a["id"]} == nodes[a["id"]]  # least-load spreads over both of A
    # the admin token may use every replica of the model
    admin = asyncio.run(_load(control_plane.data_url, t["model"], {"admin": control_plane.api_token}, 60))
    assert {n for _, s, n in admin if s == 200} == nodes[a["id"]] | nodes[b["id"]]


def test_official_openai_client(control_plane: ControlPlane, two_deployments: Any) -> None:
    t = two_deployments
    model, a = t["model"], t["a"]
    client = openai.OpenAI(base_url=control_plane.data_url + "/v1", api_key=a["inference_key"], max_retries=0)
    msgs: Any = [{"role": "user", "content": "hello"}]
    resp = client.chat.completions.with_raw_response.create(model=model, messages=msgs)
    assert resp.headers["x-inferia-node"] in t["nodes"][a["id"]]
    assert resp.parse().choices[0].message.content == "echo: hello"
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=model, messages=msgs, stream=True))  # fmt: skip
    assert text == "echo: hello"
    assert client.completions.create(model=model, prompt="abc").choices[0].text == "echo: abc"
    listed = client.models.list()
    assert [m.id for m in listed.data] == [model]
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="no-such-model", messages=msgs)
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.PermissionDeniedError):  # the other model exists, the key is not for it
        client.chat.completions.create(model=t["other"], messages=msgs)
    for bad in ("ik_wrong", "nope"):
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=control_plane.data_url + "/v1", api_key=bad, max_retries=0).models.list()
    # the same through Serve's proxy port (slower, same answers)
    slow = openai.OpenAI(base_url=control_plane.api_url + "/v1", api_key=a["inference_key"], max_retries=0)
    assert slow.chat.completions.create(model=model, messages=msgs).choices[0].message.content == "echo: hello"
    with pytest.raises(openai.NotFoundError):
        slow.chat.completions.create(model="no-such-model", messages=msgs)
    admin = openai.OpenAI(base_url=control_plane.data_url + "/v1", api_key=control_plane.api_token, max_retries=0)
    assert {model, t["other"]} <= {m.id for m in admin.models.list().data}


def test_killed_engine_fails_over_without_an_error(
    control_plane: ControlPlane, api: Client, two_deployments: Any
) -> None:
    t = two_deployments
    a = t["a"]
    victim = sorted(t["nodes"][a["id"]])[0]
    _, engines = cpl.node_pids(Path(control_plane.settings.data_dir), victim)
    assert engines, "engine process not found"
    for pid in engines:
        os.kill(pid, signal.SIGKILL)
    # at once, before and while the node leaves the routing table: every request is answered (connection
    # refused by the dead engine fails over to the other replica of the deployment)
    seen = asyncio.run(_load(control_plane.data_url, t["model"], {a["id"]: a["inference_key"]}, 40))
    assert all(s == 200 for _, s, _ in seen), seen
    assert {n for _, _, n in seen} <= t["nodes"][a["id"]]
