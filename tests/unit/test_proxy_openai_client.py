"""The official `openai` Python client as the client of the proxy (engines on loopback): answers, streams,
and each error raised as the exception an OpenAI SDK user expects."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.support.proxy_harness import ADMIN, ProxyHarness, RawServer


def _client(h: ProxyHarness, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=h.base + "/v1", api_key=key, max_retries=0, timeout=30)


async def _setup(h: ProxyHarness) -> None:
    await h.add_engine("a1", "dep-a")
    await h.add_engine("o1", "dep-o")
    h.set_routes()


async def test_chat_completion_and_stream_through_the_openai_client() -> None:
    async with ProxyHarness() as h:
        await _setup(h)
        client = _client(h, h.key("dep-a"))
        msgs: list[dict[str, str]] = [{"role": "user", "content": "hello there"}]
        resp = await client.chat.completions.create(model="m", messages=msgs)  # type: ignore[arg-type]
        assert resp.choices[0].message.content == "echo: hello there"
        raw = await client.chat.completions.with_raw_response.create(model="m", messages=msgs)  # type: ignore[arg-type]
        assert raw.headers["x-inferia-node"] == "a1"
        stream: Any = await client.chat.completions.create(model="m", messages=msgs, stream=True)  # type: ignore[arg-type]
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        assert text == "echo: hello there"
        comp = await client.completions.create(model="m", prompt="abc")
        assert comp.choices[0].text == "echo: abc"
        admin = _client(h, ADMIN)
        assert (await admin.completions.create(model="other", prompt="x")).choices[0].text == "echo: x"
        await client.close()
        await admin.close()


async def test_errors_raise_the_sdk_exceptions() -> None:
    async with ProxyHarness() as h:
        await _setup(h)
        client = _client(h, h.key("dep-a"))
        msgs: list[dict[str, str]] = [{"role": "user", "content": "x"}]
        with pytest.raises(openai.NotFoundError) as nf:
            await client.chat.completions.create(model="nope", messages=msgs)  # type: ignore[arg-type]
        assert nf.value.code == "model_not_found" and nf.value.param == "model"
        assert nf.value.type == "invalid_request_error"
        with pytest.raises(openai.PermissionDeniedError) as pd:
            await client.chat.completions.create(model="other", messages=msgs)  # type: ignore[arg-type]
        assert pd.value.code == "model_not_allowed"
        with pytest.raises(openai.AuthenticationError) as au:
            await _client(h, "ik_wrong").chat.completions.create(model="m", messages=msgs)  # type: ignore[arg-type]
        assert au.value.code == "invalid_api_key"
        with pytest.raises(openai.BadRequestError) as br:
            await client.chat.completions.create(model="", messages=msgs)  # type: ignore[arg-type]
        assert br.value.param == "model"
        h.limiter.set_limit("dep-a", 1)  # a PATCH of rate_limit_rpm through this replica
        await client.completions.create(model="m", prompt="x")
        with pytest.raises(openai.RateLimitError) as rl:
            await client.completions.create(model="m", prompt="x")
        assert rl.value.code == "rate_limit_exceeded" and rl.value.response.headers["retry-after"] == "60"
        h.limiter.set_limit("dep-a", None)
        h.deployments["dep-z"] = "zero"
        h.keys.invalidate()
        with pytest.raises(openai.InternalServerError) as ie:
            await _client(h, h.key("dep-z")).completions.create(model="zero", prompt="x")
        assert ie.value.status_code == 503 and ie.value.code == "no_healthy_endpoint"
        await client.close()


async def test_stream_broken_by_the_engine_raises_in_the_sdk() -> None:
    async with ProxyHarness() as h:
        raw = RawServer("half")
        port = await raw.start()
        h.add_endpoint("half", f"http://127.0.0.1:{port}", "dep-a")
        h.set_routes()
        client = _client(h, h.key("dep-a"))
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
        )
        with pytest.raises(openai.APIError, match="no replica of 'm' answered"):
            async for _ in stream:
                pass
        await client.close()
        await raw.stop()
