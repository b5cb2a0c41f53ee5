"""The data port's raw-ASGI heartbeat handler (serve_app/heartbeat_fast.py), no Ray: its hand-written field
checks agree with the pydantic model (same limits, same values, and whatever it does not accept is left to
pydantic), and every answer (200, 401/403/404/409/410, 413, 422 naming the field, 503, 500) is byte for byte
the FastAPI route's, which the data port's front app (serve_app/app.py DataPortApp) bypasses."""

from __future__ import annotations

import asyncio
import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from annotated_types import MaxLen
from pydantic import ValidationError

from serve_app import heartbeat_fast as hf
from serve_app.app import DataPortApp, create_app
from serve_app.batcher import MicroBatcher
from serve_app.context import Counters
from serve_app.errors import ApiError
from serve_app.schemas import HeartbeatIn

_STATUS = {"n-ok": 200, "n-forbid": 403, "n-unknown": 404, "n-endpoint": 409, "n-gone": 410}


@dataclass
class _Cfg:
    heartbeat_interval_s: float = 5.0


@dataclass
class FakeCtx:
    """What the heartbeat path reads of an AppContext; the inventory answers by node id."""

    started: bool = True
    cfg: _Cfg = field(default_factory=_Cfg)
    counters: Counters = field(default_factory=Counters)
    flushed: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.heartbeats: MicroBatcher[dict[str, Any], tuple[int, str | None, str | None]] = MicroBatcher(self._flush)

    async def _flush(self, beats: list[dict[str, Any]]) -> list[tuple[int, str | None, str | None]]:
        self.flushed.extend(beats)
        if any(b["node_id"] == "n-timeout" for b in beats):
            raise TimeoutError
        if any(b["node_id"] == "n-crash" for b in beats):
            raise RuntimeError("inventory actor died")
        out: list[tuple[int, str | None, str | None]] = []
        for b in beats:
            st = _STATUS.get(b["node_id"] or "", 404)
            out.append((st, b["node_id"], None if st == 200 else f"refused {st}"))
        return out


def _clients(ctx: FakeCtx) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
    api = create_app(ctx)  # type: ignore[arg-type]
    routes = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    fast = httpx.ASGITransport(app=DataPortApp(api), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=routes, base_url="http://t"), httpx.AsyncClient(
        transport=fast, base_url="http://t"
    )


OK = {"authorization": "Bearer tok"}
CASES: list[tuple[bytes | Any, dict[str, str]]] = [
    ({"node_id": "n-ok"}, OK),
    ({"node_id": "n-ok", "state": "starting", "health_score": 7, "cpu_percent": 3, "engine_kv_cache": 0.5}, OK),
    ({"node_id": "n-ok", "seq": 4, "start_id": "a.b:c-1", "endpoint": "https://x:1/", "extra": [1]}, OK),
    ({"provider": "p", "provider_instance_id": "i-1"}, OK),
    ({"node_id": "n-ok", "token": "own"}, {}),
    ({"node_id": "n-ok"}, {}),  # 401
    ({"node_id": "n-ok"}, {"authorization": "Basic abc"}),  # 401
    ({"node_id": "n-ok"}, {"authorization": "Bearer    "}),  # 401
    ({"node_id": "n-forbid"}, OK),
    ({"node_id": "n-unknown"}, OK),
    ({"node_id": "n-endpoint"}, OK),
    ({"node_id": "n-gone"}, OK),
    ({"node_id": "n-timeout"}, OK),  # 503, retry-after
    ({"node_id": "n-crash"}, OK),  # 500
    (b"[1,", OK),
    (b"\xff\xfe", OK),
    (b"", OK),
    (b'{"node_id": "n", "cpu_percent": 1e400}', OK),
    (b'{"node_id": "n", "gpu_util": NaN}', OK),
    (b'{"node_id": "n", "ram_used_mb": 123456789012345678901234567890}', OK),
    ({"state": "ready"}, OK),
    ({"node_id": ""}, OK),
    ({"provider": "p"}, OK),
    ({"node_id": "n", "health_score": 101}, OK),
    ({"node_id": "n-ok", "health_score": 50.0}, OK),  # lax int: pydantic accepts it
    ({"node_id": "n-ok", "health_score": "50"}, OK),
    ({"node_id": "n-ok", "health_score": True}, OK),
    ({"node_id": "n", "health_score": None}, OK),
    ({"node_id": "n", "state": None}, OK),
    ({"node_id": "n", "state": "bad"}, OK),
    ({"node_id": "n", "seq": 1.0}, OK),
    ({"node_id": "n", "seq": -1}, OK),
    ({"node_id": "n", "seq": True}, OK),
    ({"node_id": "n", "start_id": ""}, OK),
    ({"node_id": "n", "start_id": "a b"}, OK),
    ({"node_id": "n", "endpoint": "ftp://x"}, OK),
    ({"node_id": "n", "engine_kv_cache": 1.5}, OK),
    ({"node_id": "n", "engine_waiting": 2e9}, OK),
    ({"node_id": "n", "cpu_percent": -1}, OK),
    ({"node_id": "n", "cpu_percent": "5"}, OK),
    ({"node_id": 5}, OK),
    ({"node_id": "x" * 129}, OK),
    ({"node_id": "n", "reason": "r" * 1001}, OK),
    (None, OK),
    ([], OK),
    ("x", OK),
    (1, OK),
    ({"heartbeats": "x"}, OK),
    ({"heartbeats": [{"node_id": "n-ok"}] * 10_001}, OK),
    ({"heartbeats": [{"node_id": "n-ok"}, {"node_id": "n", "state": "bad"}]}, OK),
    ({"heartbeats": [{"node_id": "n-ok"}, 3]}, OK),
    ({"heartbeats": [{"node_id": "n-ok"}, {"node_id": "n-gone", "token": "t"}, {"node_id": "n-forbid"}]}, OK),
    ({"heartbeats": []}, {}),
]


@pytest.mark.parametrize("i", range(len(CASES)))
async def test_same_answer_as_the_fastapi_route(i: int) -> None:
    body, headers = CASES[i]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    routes_ctx, fast_ctx = FakeCtx(), FakeCtx()
    routes, _ = _clients(routes_ctx)
    _, fast = _clients(fast_ctx)
    async with routes, fast:
        a = await routes.post(hf.HEARTBEAT_PATH, content=content, headers=headers)
        b = await fast.post(hf.HEARTBEAT_PATH, content=content, headers=headers)
    assert (b.status_code, b.content) == (a.status_code, a.content)
    for h in ("content-type", "content-length", "retry-after"):
        assert b.headers.get(h) == a.headers.get(h), h
    assert fast_ctx.flushed == routes_ctx.flushed  # the inventory got the same beats
    assert fast_ctx.counters.heartbeat_requests == routes_ctx.counters.heartbeat_requests
    if a.status_code in (401, 403, 404, 409, 410, 422, 503):
        err = b.json()
        assert set(err) <= {"code", "message", "field"} and err["code"] and err["message"], err


async def test_the_answers_themselves() -> None:
    ctx = FakeCtx()
    _, fast = _clients(ctx)
    async with fast:
        r = await fast.post(hf.HEARTBEAT_PATH, json={"node_id": "n-ok", "cpu_percent": 2}, headers=OK)
        assert (r.status_code, r.json()) == (200, {"ok": True, "node_id": "n-ok", "interval_s": 5.0})
        assert ctx.flushed[-1]["token"] == "tok" and ctx.flushed[-1]["metrics"] == {"cpu_percent": 2.0}
        r = await fast.post(hf.HEARTBEAT_PATH, json={"node_id": "n", "health_score": 101}, headers=OK)
        assert r.status_code == 422 and r.json()["field"] == "health_score", r.text
        assert r.json()["message"].startswith("health_score: Input should be less than or equal to 100")
        r = await fast.post(hf.HEARTBEAT_PATH, json={"heartbeats": [{"node_id": "n-ok"}, {"node_id": 1}]})
        assert r.status_code == 422 and r.json()["field"] == "heartbeats.1.node_id", r.text
        r = await fast.post(hf.HEARTBEAT_PATH, json={"node_id": "n-gone"}, headers=OK)
        assert (r.status_code, r.json()) == (410, {"code": "node_gone", "message": "refused 410"})
        r = await fast.post(hf.HEARTBEAT_PATH, json={"node_id": "n-ok"})
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        r = await fast.post(
            hf.HEARTBEAT_PATH, json={"heartbeats": [{"node_id": "n-ok", "token": "t"}, {"node_id": "x"}]}
        )
        assert r.json()["results"] == [
            {"node_id": "n-ok", "status": 200},
            {"node_id": "x", "status": 404, "message": "refused 404"},
        ]


async def test_body_limit_with_and_without_content_length() -> None:
    ctx = FakeCtx()
    small = 64

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await hf.handle(ctx, scope, receive, send, max_bytes=small)  # type: ignore[arg-type]

    big = json.dumps({"node_id": "n-ok", "reason": "a" * 100}).encode()

    async def chunks() -> Any:
        for i in range(0, len(big), 16):
            yield big[i : i + 16]

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for content in (big, chunks()):
            r = await c.post(hf.HEARTBEAT_PATH, content=content, headers=OK)
            assert r.status_code == 413, r.text
            assert r.json() == {
                "code": "payload_too_large",
                "message": f"request body larger than {small} bytes",
                "field": "body",
            }
        r = await c.post(hf.HEARTBEAT_PATH, content=b'{"node_id": "n-ok"}', headers=OK)
        assert r.status_code == 200
    assert [b["node_id"] for b in ctx.flushed] == ["n-ok"]  # the refused ones never reached the inventory


async def test_not_started_goes_to_fastapi() -> None:
    """Before the context started, the front app leaves the request to FastAPI (whose dependency starts it)."""
    ctx = FakeCtx(started=False)
    starts: list[int] = []

    async def start() -> None:
        starts.append(1)
        ctx.started = True

    ctx.start = start  # type: ignore[attr-defined]
    _, fast = _clients(ctx)
    async with fast:
        r = await fast.post(hf.HEARTBEAT_PATH, json={"node_id": "n-ok"}, headers=OK)
        assert r.status_code == 200 and starts == [1]
        r = await fast.get(hf.HEARTBEAT_PATH)
        assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"


def test_limits_agree_with_the_model() -> None:
    fields = HeartbeatIn.model_fields
    for name, limit in hf._STR_MAX.items():
        assert [m.max_length for m in fields[name].metadata if isinstance(m, MaxLen)] == [limit], name
    assert set(hf._METRIC_MAX) | set(hf._STR_MAX) | {"state", "health_score", "endpoint", "seq", "start_id"} == set(
        fields
    )
    assert set(hf._METRIC_MAX) == set(HeartbeatIn(node_id="n", cpu_percent=1).to_core(None)["metrics"]) | {
        "ram_used_mb",
        "gpu_util",
        "gpu_mem_used_mb",
        "engine_running",
        "engine_waiting",
        "engine_kv_cache",
    }


_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    100,
    101,
    2**63,
    2**53 + 1,
    10**40,
    0.0,
    -0.0,
    0.5,
    1.0,
    50.0,
    1e9,
    1e10,
    math.inf,
    math.nan,
    "",
    "ready",
    "starting",
    "failed",
    "x",
    "a b",
    "http://h:1",
    "https://h",
    "ftp://h",
    "7",
    "x" * 65,
    "y" * 129,
    "z" * 300,
    [],
    {},
]
_FIELDS = [*HeartbeatIn.model_fields, "unknown"]


def _exact(core: dict[str, Any]) -> str:
    """Compared as text: -0.0 vs 0.0 and 1 vs 1.0 differ; the order of the metrics does not matter."""
    return repr({**core, "metrics": sorted(core["metrics"].items())})


def test_fast_checks_never_disagree_with_pydantic() -> None:
    """Random beats: whatever the hand-written checks accept, pydantic accepts with the same dict; whatever
    pydantic refuses, they refuse (and parse_beat then answers pydantic's own message)."""
    rnd = random.Random(15)
    accepted = 0
    for _ in range(20_000):
        item = {k: rnd.choice(_VALUES) for k in rnd.sample(_FIELDS, rnd.randint(0, 6))}
        if rnd.random() < 0.7:
            item["node_id"] = rnd.choice(["n1", "n2", "", None])
        fast = hf._fast(item, "hdr")
        try:
            slow: dict[str, Any] | None = HeartbeatIn.model_validate(item).to_core("hdr")
        except ValidationError:
            slow = None
        if fast is not None:
            accepted += 1
            assert slow is not None, item
            assert _exact(fast) == _exact(slow), item
            assert _exact(hf.parse_beat(item, "", "hdr")) == _exact(fast)
        if slow is None:
            with pytest.raises(ApiError) as exc:
                hf.parse_beat(item, "heartbeats.2", "hdr")
            assert exc.value.status == 422 and exc.value.field and exc.value.field.startswith("heartbeats.2")
        else:
            assert _exact(hf.parse_beat(item, "", "hdr")) == _exact(slow)
    assert accepted > 1_000  # random values: most beats fail some check, yet many pass all of them


def test_bearer_of_reads_like_starlette() -> None:
    assert hf.bearer_of([(b"authorization", b"Bearer abc ")]) == "abc"
    assert hf.bearer_of([(b"authorization", b"bEaReR abc")]) == "abc"
    assert hf.bearer_of([(b"authorization", b"Bearer  "), (b"authorization", b"Bearer x")]) is None
    assert hf.bearer_of([(b"authorization", b"Basic abc")]) is None
    assert hf.bearer_of([(b"x-other", b"Bearer abc")]) is None


async def test_batcher_linger_fills_small_batches_only() -> None:
    """The heartbeat batcher's linger (serve_app/context.py HEARTBEAT_LINGER_S): requests arriving within it
    share the call; a batch already at linger_below goes at once."""
    batches: list[int] = []

    async def flush(items: list[int]) -> list[int]:
        batches.append(len(items))
        return items

    b: MicroBatcher[int, int] = MicroBatcher(flush, linger_s=0.05, linger_below=10)

    async def later(i: int) -> int:
        await asyncio.sleep(0.01)
        return await b.submit(i)

    assert await asyncio.gather(b.submit(0), later(1), later(2)) == [0, 1, 2]
    assert batches == [3]  # the two later ones arrived within the linger
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await b.submit_many(list(range(10))) == list(range(10))
    assert batches == [3, 10] and loop.time() - t0 < 0.04  # no linger for a full batch
