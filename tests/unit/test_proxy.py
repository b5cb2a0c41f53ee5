"""The inference proxy (serve_app/proxy.py) against engines on loopback: every path of a request (answered,
engine error, timeout, refused connection, a connection lost after sending, client gone), the counters on
each, key isolation between deployments, OpenAI-shaped errors, and streams relayed chunk by chunk."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import pytest

from serve_app.proxy import ProxySettings
from tests.support.proxy_harness import ADMIN, ProxyHarness, RawServer, chat, closed_port

CHAT = "/v1/chat/completions"


def _error(r: Any, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err


async def _two_deployments(h: ProxyHarness) -> None:
    for node, dep in (("a1", "dep-a"), ("a2", "dep-a"), ("b1", "dep-b"), ("o1", "dep-o")):
        await h.add_engine(node, dep)
    h.set_routes()


def _clean(h: ProxyHarness) -> None:
    assert h.proxy.outstanding == {}, h.proxy.outstanding
    for u in h.upstreams:
        if u.engine is not None:
            assert u.engine.counters.in_flight == 0, (u.node_id, u.engine.counters)


# ------------------------------------------------------------------------------------------- answered


async def test_answer_relayed_unchanged_with_engine_key_and_node_header() -> None:
    async with ProxyHarness() as h:
        await _two_deployments(h)
        raw = json.dumps(chat(text="hello there")).encode()
        r = await h.post(CHAT, raw, key=h.key("dep-a"))
        assert r.status_code == 200, r.text
        node = r.headers["x-inferia-node"]
        assert node in ("a1", "a2")
        eng = h.engine(node).counters
        assert eng.last_body == raw  # the request body went through byte for byte
        assert eng.last_headers["authorization"] == "Bearer ek_dep-a"  # the engine key, not the client's
        body = r.json()
        assert body["choices"][0]["message"]["content"] == "echo: hello there"
        assert body["served_by"] == node
        assert r.headers["content-length"] == str(len(r.content))
        r = await h.post("/v1/completions", {"model": "m", "prompt": "abc"}, key=h.key("dep-b"))
        assert r.status_code == 200 and r.headers["x-inferia-node"] == "b1"
        assert r.json()["choices"][0]["text"] == "echo: abc"
        _clean(h)


async def test_model_renamed_for_a_replica_that_serves_it_under_another_name() -> None:
    async with ProxyHarness() as h:
        await h.add_engine("a1", "dep-a", served_model="m-q4")
        h.set_routes()
        r = await h.post(CHAT, chat(), key=h.key("dep-a"))
        assert r.status_code == 200, r.text
        sent = json.loads(h.engine("a1").counters.last_body)
        assert sent["model"] == "m-q4" and sent["messages"] == chat()["messages"]


async def test_each_key_reaches_only_its_own_deployment_under_concurrent_load() -> None:
    async with ProxyHarness() as h:
        await _two_deployments(h)
        own = {"dep-a": {"a1", "a2"}, "dep-b": {"b1"}}
        jobs = [dep for dep in own for _ in range(60)]
        random.shuffle(jobs)

        async def one(dep: str) -> tuple[str, str]:
            r = await h.post(CHAT, chat(), key=h.key(dep))
            assert r.status_code == 200, r.text
            return dep, r.headers["x-inferia-node"]

        seen = await asyncio.gather(*(one(d) for d in jobs))
        for dep, node in seen:
            assert node in own[dep], (dep, node)
        assert {n for d, n in seen if d == "dep-a"} == {"a1", "a2"}  # least-load spreads over both
        _clean(h)


async def test_admin_token_uses_every_replica_of_the_model_with_each_deployment_key() -> None:
    async with ProxyHarness() as h:
        await _two_deployments(h)
        nodes = set()
        for _ in range(40):
            r = await h.post(CHAT, chat(), key=ADMIN)
            assert r.status_code == 200, r.text
            nodes.add(r.headers["x-inferia-node"])
        assert nodes == {"a1", "a2", "b1"}
        assert h.engine("b1").counters.last_headers["authorization"] == "Bearer ek_dep-b"
        assert h.engine("a1").counters.last_headers["authorization"] == "Bearer ek_dep-a"


async def test_least_outstanding_replica_is_chosen() -> None:
    async with ProxyHarness() as h:
        await h.add_engine("a1", "dep-a")
        await h.add_engine("a2", "dep-a")
        h.set_routes()
        h.engine("a1").behaviour.delay_s = 0.5
        h.proxy.outstanding["a1"] = 1  # as if a1 already had one request in flight
        r = await h.post(CHAT, chat(), key=h.key("dep-a"))
        assert r.headers["x-inferia-node"] == "a2"
        h.proxy.outstanding.clear()


# ------------------------------------------------------------------------------------------- errors


async def test_openai_shaped_errors() -> None:
    async with ProxyHarness() as h:
        await _two_deployments(h)
        _error(await h.post(CHAT, chat()), 401, "missing_api_key")
        _error(await h.post(CHAT, chat(), key="ik_wrong"), 401, "invalid_api_key")
        _error(await h.post(CHAT, chat(model="other"), key=h.key("dep-a")), 403, "model_not_allowed", "model")
        _error(await h.post(CHAT, chat(model="nope"), key=h.key("dep-a")), 404, "model_not_found", "model")
        _error(await h.post(CHAT, chat(model="nope"), key=ADMIN), 404, "model_not_found", "model")
        _error(await h.post(CHAT, b"{nope", key=ADMIN), 400, "invalid_request", "body")
        _error(await h.post(CHAT, b"[1]", key=ADMIN), 400, "invalid_request", "body")
        _error(await h.post(CHAT, {"messages": []}, key=ADMIN), 400, "invalid_request", "model")
        _error(await h.post(CHAT, {"model": 5}, key=ADMIN), 400, "invalid_request", "model")
        h.deployments["dep-z"] = "zero"  # deployed, no replica routed
        h.keys.invalidate()
        r = await h.post(CHAT, chat(model="zero"), key=h.key("dep-z"))
        _error(r, 503, "no_healthy_endpoint", "model")
        assert r.headers["retry-after"] == "2"
        _error(await h.post(CHAT, chat(model="zero"), key=ADMIN), 503, "no_healthy_endpoint")
        h.rpm["dep-a"] = 2  # the limit as the key index reads it from the deployments
        await h.keys.reload()
        loads = h.loads
        for _ in range(2):
            assert (await h.post(CHAT, chat(), key=h.key("dep-a"))).status_code == 200
        r = await h.post(CHAT, chat(), key=h.key("dep-a"))
        _error(r, 429, "rate_limit_exceeded")
        assert r.headers["retry-after"] == "30"  # 2 per minute: one more in 30 s
        assert (await h.post(CHAT, chat(), key=h.key("dep-b"))).status_code == 200  # its own bucket
        assert (await h.post(CHAT, chat(), key=ADMIN)).status_code == 200  # the admin token is not limited
        assert h.loads == loads  # no read per request: the limit came with the key
        _clean(h)


async def test_body_limit() -> None:
    async with ProxyHarness(settings=ProxySettings(max_body_bytes=1000)) as h:
        await _two_deployments(h)
        big = chat(text="x" * 2000)
        _error(await h.post(CHAT, big, key=ADMIN), 413, "payload_too_large", "body")

        async def chunks() -> Any:
            data = json.dumps(big).encode()
            for i in range(0, len(data), 300):
                yield data[i : i + 300]

        r = await h.http.post(CHAT, content=chunks(), headers={"authorization": f"Bearer {ADMIN}"})
        _error(r, 413, "payload_too_large", "body")
        ok = await h.post(CHAT, chat(text="x" * 100), key=ADMIN)
        assert ok.status_code == 200


async def test_engine_error_is_passed_through_and_not_retried() -> None:
    async with ProxyHarness() as h:
        await h.add_engine("a1", "dep-a")
        await h.add_engine("a2", "dep-a")
        h.set_routes()
        for node in ("a1", "a2"):
            h.engine(node).behaviour.status = 429
            h.engine(node).behaviour.retry_after = "3"
        r = await h.post(CHAT, chat(), key=h.key("dep-a"))
        assert r.status_code == 429
        assert r.headers["retry-after"] == "3" and r.headers["x-inferia-node"] in ("a1", "a2")
        assert r.json()["error"]["message"] == "engine answered 429"
        assert sum(h.engine(n).counters.requests for n in ("a1", "a2")) == 1  # the engine ran it: no retry
        h.engine("a1").behaviour.status = h.engine("a2").behaviour.status = 500
        r = await h.post(CHAT, chat(), key=h.key("dep-a"))
        assert r.status_code == 500
        assert sum(h.engine(n).counters.requests for n in ("a1", "a2")) == 2
        _clean(h)


async def test_refused_connection_fails_over_to_another_replica() -> None:
    async with ProxyHarness() as h:
        h.add_endpoint("dead1", f"http://127.0.0.1:{closed_port()}", "dep-a")
        h.add_endpoint("dead2", f"http://127.0.0.1:{closed_port()}", "dep-a")
        await h.add_engine("a1", "dep-a")
        h.set_routes()
        for _ in range(10):
            r = await h.post(CHAT, chat(), key=h.key("dep-a"))
            assert r.status_code == 200, r.text
            assert r.headers["x-inferia-node"] == "a1"
        assert h.proxy.failures_total >= 1
        assert h.engine("a1").counters.requests == 10
        _clean(h)


async def test_every_replica_refusing_is_502() -> None:
    async with ProxyHarness() as h:
        for i in range(4):
            h.add_endpoint(f"dead{i}", f"http://127.0.0.1:{closed_port()}", "dep-a")
        h.set_routes()
        err = _error(await h.post(CHAT, chat(), key=h.key("dep-a")), 502, "upstream_unavailable")
        assert "ConnectionRefusedError" in err["message"]
        assert h.proxy.failures_total == 3  # MAX_ATTEMPTS replicas tried, then given up
        _clean(h)


async def test_read_timeout_is_504_and_never_retried() -> None:
    async with ProxyHarness(settings=ProxySettings(read_timeout_s=0.3)) as h:
        await h.add_engine("a1", "dep-a")
        await h.add_engine("a2", "dep-a")
        h.set_routes()
        for node in ("a1", "a2"):
            h.engine(node).behaviour.hang = True
        t0 = time.monotonic()
        _error(await h.post(CHAT, chat(), key=h.key("dep-a")), 504, "upstream_timeout")
        assert time.monotonic() - t0 < 2.0
        # the generation was sent to one engine: the other never saw it
        assert sorted(h.engine(n).counters.requests for n in ("a1", "a2")) == [0, 1]
        assert h.proxy.timeouts_total == 1
        # the proxy closed its connection: the hung engine learns its client is gone
        hung = next(n for n in ("a1", "a2") if h.engine(n).counters.requests)
        await asyncio.wait_for(h.engine(hung).gone.wait(), 2)
        _clean(h)


async def test_connection_lost_after_sending_is_502_and_never_retried() -> None:
    async with ProxyHarness() as h:
        raw = RawServer("drop")
        port = await raw.start()
        h.add_endpoint("dropper", f"http://127.0.0.1:{port}", "dep-a")
        h.set_routes()
        _error(await h.post(CHAT, chat(), key=h.key("dep-a")), 502, "upstream_unavailable")
        assert raw.requests == 1
        await h.add_engine("a1", "dep-a")  # a healthy replica beside it
        h.set_routes(version=2)
        h.proxy.outstanding["a1"] = 5  # the dropper is the least loaded: it is picked first
        _error(await h.post(CHAT, chat(), key=h.key("dep-a")), 502, "upstream_unavailable")
        assert raw.requests == 2 and h.engine("a1").counters.requests == 0  # not retried elsewhere
        h.proxy.outstanding.pop("a1")
        await raw.stop()
        _clean(h)


# ------------------------------------------------------------------------------------------- streams


async def _read_events(h: ProxyHarness, body: dict[str, Any], key: str) -> tuple[int, list[bytes], list[float]]:
    """Status, raw chunks and the time each arrived (seconds after the request was sent)."""
    chunks: list[bytes] = []
    times: list[float] = []
    t0 = time.monotonic()
    async with h.http.stream("POST", CHAT, json=body, headers={"authorization": f"Bearer {key}"}) as r:
        async for chunk in r.aiter_raw():
            chunks.append(chunk)
            times.append(time.monotonic() - t0)
        return r.status_code, chunks, times


async def test_stream_is_relayed_chunk_by_chunk() -> None:
    async with ProxyHarness() as h:
        await h.add_engine("a1", "dep-a")
        h.set_routes()
        h.engine("a1").behaviour.chunk_delay_s = 0.25
        status, chunks, times = await _read_events(h, chat(text="one two three", stream=True), h.key("dep-a"))
        assert status == 200
        events = [e for e in b"".join(chunks).split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]"
        words = [json.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:-1]]
        assert "".join(words) == "echo: one two three"
        # the first event arrived long before the last one was written (4 events, 0.25 s apart)
        assert times[0] < 0.25 and times[-1] > 0.6, times
        _clean(h)


async def test_stream_request_answered_with_an_error_is_relayed_whole() -> None:
    async with ProxyHarness() as h:
        await h.add_engine("a1", "dep-a")
        h.set_routes()
        h.engine("a1").behaviour.status = 503
        r = await h.post(CHAT, chat(stream=True), key=h.key("dep-a"))
        assert r.status_code == 503 and r.json()["error"]["message"] == "engine answered 503"
        _clean(h)


async def test_stream_broken_by_the_engine_ends_with_an_error_event() -> None:
    async with ProxyHarness() as h:
        raw = RawServer("half")
        port = await raw.start()
        h.add_endpoint("half", f"http://127.0.0.1:{port}", "dep-a")
        h.set_routes()
        status, chunks, _ = await _read_events(h, chat(stream=True), h.key("dep-a"))
        assert status == 200
        events = [e for e in b"".join(chunks).split(b"\n\n") if e]
        assert events[0].startswith(b"data: {") and b"choices" in events[0]
        last = json.loads(events[-1][6:])
        assert last["error"]["code"] == "upstream_unavailable", last
        await raw.stop()
        _clean(h)


async def _open_stream(port: int, body: dict[str, Any], key: str) -> tuple[asyncio.StreamReader, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode()
    head = (
        f"POST {CHAT} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
    )
    writer.write(head.encode() + data)
    await writer.drain()
    return reader, writer


async def test_client_gone_mid_stream_releases_the_engine_and_the_counters_at_once() -> None:
    async with ProxyHarness() as h:
        await h.add_engine("a1", "dep-a")
        h.set_routes()
        eng = h.engine("a1")
        eng.behaviour.chunk_delay_s = 1.0
        eng.behaviour.words = 20  # a 20 s stream
        reader, writer = await _open_stream(h.port, chat(stream=True), h.key("dep-a"))
        first = await asyncio.wait_for(reader.readuntil(b"data: "), 5)
        assert b"200 OK" in first
        assert h.proxy.outstanding == {"a1": 1} and eng.counters.in_flight == 1
        t0 = time.monotonic()
        writer.close()  # the client goes away mid-stream
        await asyncio.wait_for(eng.gone.wait(), 2)
        released = time.monotonic() - t0
        assert released < 0.5, released  # the engine learnt it at once, not after its next chunk
        for _ in range(100):
            if not h.proxy.outstanding and eng.counters.in_flight == 0:
                break
            await asyncio.sleep(0.01)
        _clean(h)
        assert h.proxy.client_gone_total == 1


async def test_client_gone_while_the_engine_works_releases_it() -> None:
    async with ProxyHarness() as h:
        await h.add_engine("a1", "dep-a")
        h.set_routes()
        eng = h.engine("a1")
        eng.behaviour.delay_s = 30  # a long non-streamed generation
        _, writer = await _open_stream(h.port, chat(), h.key("dep-a"))
        for _ in range(200):
            if eng.counters.in_flight:
                break
            await asyncio.sleep(0.01)
        assert h.proxy.outstanding == {"a1": 1}
        writer.close()
        await asyncio.wait_for(eng.gone.wait(), 2)
        for _ in range(100):
            if not h.proxy.outstanding:
                break
            await asyncio.sleep(0.01)
        _clean(h)


# ------------------------------------------------------------------------------------------- counters


async def test_counters_never_negative_over_every_path_at_once() -> None:
    async with ProxyHarness(settings=ProxySettings(read_timeout_s=0.3)) as h:
        await _two_deployments(h)
        h.add_endpoint("dead", f"http://127.0.0.1:{closed_port()}", "dep-a")
        h.set_routes()
        h.engine("a2").behaviour.status = 500
        h.engine("b1").behaviour.hang = True
        samples: list[dict[str, int]] = []
        running = True

        async def sample() -> None:
            while running:
                samples.append(dict(h.proxy.outstanding))
                await asyncio.sleep(0.002)

        async def one(i: int) -> None:
            kind = i % 5
            if kind == 0:
                await h.post(CHAT, chat(), key=h.key("dep-a"))  # a1 answers, a2 500, dead fails over
            elif kind == 1:
                await h.post(CHAT, chat(), key=h.key("dep-b"))  # b1 hangs: 504
            elif kind == 2:
                await h.post(CHAT, chat(stream=True), key=h.key("dep-a"))
            elif kind == 3:  # a client that leaves mid-way
                _, w = await _open_stream(h.port, chat(stream=True), h.key("dep-b"))
                await asyncio.sleep(0.05)
                w.close()
            else:
                await h.post(CHAT, chat(model="other"), key=h.key("dep-a"))  # 403 before any replica

        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(one(i) for i in range(100)))
        await asyncio.sleep(0.5)  # the hung ones time out
        running = False
        await sampler
        assert all(n > 0 for s in samples for n in s.values()), "an entry at 0 or below was kept"
        assert any(samples), "nothing was ever in flight"
        for _ in range(100):
            if not h.proxy.outstanding:
                break
            await asyncio.sleep(0.02)
        assert h.proxy.outstanding == {}


# ------------------------------------------------------------------------------------------- key index


async def test_key_index_reloads_on_miss_and_remembers_wrong_keys() -> None:
    async with ProxyHarness() as h:
        await _two_deployments(h)
        r = await h.post(CHAT, chat(), key=h.key("dep-a"))
        assert r.status_code == 200
        loads = h.loads
        for _ in range(20):
            assert (await h.post(CHAT, chat(), key=h.key("dep-a"))).status_code == 200
        assert h.loads == loads  # known key: one dict probe, no reload
        for _ in range(20):
            assert (await h.post(CHAT, chat(), key="ik_wrong")).status_code == 401
        assert h.loads == loads + 1  # the wrong key cost one reload, then the negative cache answered
        h.deployments["dep-new"] = "m"  # created a moment ago, through another replica
        await h.add_engine("n1", "dep-new")
        h.set_routes(version=1)  # same version: the index does not know the key yet
        r = await h.post(CHAT, chat(), key=h.key("dep-new"))
        assert r.status_code == 200 and r.headers["x-inferia-node"] == "n1"


async def test_concurrent_misses_share_one_reload() -> None:
    async with ProxyHarness() as h:
        await _two_deployments(h)
        rs = await asyncio.gather(*(h.post(CHAT, chat(), key=h.key("dep-a")) for _ in range(30)))
        assert all(r.status_code == 200 for r in rs)
        assert h.loads <= 2  # the first reload, and at most one more for those that came while it ran


async def test_key_reload_failure_is_503_and_known_keys_keep_working() -> None:
    async with ProxyHarness() as h:
        await _two_deployments(h)
        assert (await h.post(CHAT, chat(), key=h.key("dep-a"))).status_code == 200
        h.key_loads_fail = True
        assert (await h.post(CHAT, chat(), key=h.key("dep-a"))).status_code == 200  # in the map
        r = await h.post(CHAT, chat(), key="ik_unknown")
        _error(r, 503, "unavailable")


@pytest.mark.parametrize("stream", [False, True])
async def test_routing_version_change_reloads_keys_in_the_background(stream: bool) -> None:
    async with ProxyHarness() as h:
        await _two_deployments(h)
        assert (await h.post(CHAT, chat(stream=stream), key=h.key("dep-a"))).status_code == 200
        loads = h.loads
        h.set_routes(version=2)
        assert (await h.post(CHAT, chat(stream=stream), key=h.key("dep-a"))).status_code == 200
        for _ in range(50):
            if h.loads > loads:
                break
            await asyncio.sleep(0.01)
        assert h.loads == loads + 1
