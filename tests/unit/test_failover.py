"""Several API addresses (issue 15): the client and the node agent fail over along them (controller/failover.py,
adapters/agent.py), never on a 4xx, and a non-idempotent request only when nothing was sent."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import httpx
import pytest

from adapters import agent as agent_mod
from controller.client import AsyncClient, Client, ConnectionFailed, NotFound, url_from_settings
from controller.config import load_settings
from controller.failover import Addresses, idempotent, retry_elsewhere, split_urls

TOKEN = "it_" + secrets.token_urlsafe(24)  # made per run: no literal secret in the tree
A, B, C = "http://a.test:8001", "http://b.test:8001", "http://c.test:8001"

Behaviour = Callable[[httpx.Request], httpx.Response]


def hosts(down: dict[str, type[httpx.TransportError] | int], seen: list[str]) -> Behaviour:
    """A transport where each host in `down` fails with that error class (or answers that status)."""

    def handle(request: httpx.Request) -> httpx.Response:
        host = f"http://{request.url.host}:{request.url.port}"
        seen.append(host)
        how = down.get(host)
        if isinstance(how, int):
            return httpx.Response(how, json={"code": f"http_{how}", "message": "no"})
        if how is not None:
            raise how("boom", request=request)
        return httpx.Response(200, json={"host": host})

    return handle


def client(down: dict[str, type[httpx.TransportError] | int], seen: list[str], urls: str = f"{A},{B},{C}") -> Client:
    return Client(urls, token=TOKEN, transport=httpx.MockTransport(hosts(down, seen)))


def test_split_urls_takes_a_comma_list_or_a_sequence() -> None:
    assert split_urls(f" {A}/, {B} ,") == [A, B]
    assert split_urls([A + "/", B]) == [A, B]
    with pytest.raises(ValueError):
        split_urls(" , ")


def test_idempotent_requests() -> None:
    assert idempotent("GET", "/v1/pools") and idempotent("delete", "/v1/pools/p")
    assert idempotent("POST", "/inventory/heartbeat")  # the beat's seq makes a copy harmless
    assert not idempotent("POST", "/v1/pools") and not idempotent("PATCH", "/v1/pools/p")


def test_retry_elsewhere_rules() -> None:
    req = httpx.Request("GET", A)
    assert retry_elsewhere(httpx.ConnectError("x", request=req), idempotent_request=False)
    assert retry_elsewhere(httpx.RemoteProtocolError("x", request=req), idempotent_request=True)
    assert not retry_elsewhere(httpx.RemoteProtocolError("x", request=req), idempotent_request=False)
    assert not retry_elsewhere(httpx.ReadTimeout("x", request=req), idempotent_request=True)


def test_a_read_moves_on_past_a_refused_address_and_stays_on_the_one_that_answered() -> None:
    seen: list[str] = []
    with client({A: httpx.ConnectError}, seen) as c:
        assert c.list_pools() == {"host": B}
        assert c.base_url == B
        assert c.list_pools() == {"host": B}
    assert seen == [A, B, B]


def test_a_read_moves_on_when_the_connection_breaks_or_the_address_has_no_replica() -> None:
    seen: list[str] = []
    with client({A: httpx.RemoteProtocolError, B: 503}, seen) as c:
        assert c.routing_table() == {"host": C}
    assert seen == [A, B, C]


def test_a_4xx_is_an_answer_not_a_failover() -> None:
    seen: list[str] = []
    with client({A: 404}, seen) as c, pytest.raises(NotFound):
        c.get_pool("p")
    assert seen == [A]


def test_a_create_moves_on_only_when_nothing_was_sent() -> None:
    seen: list[str] = []
    with client({A: httpx.ConnectError}, seen) as c:
        assert c.create_pool("p") == {"host": B}
    seen.clear()
    with client({A: httpx.RemoteProtocolError}, seen) as c, pytest.raises(ConnectionFailed):
        c.create_pool("p")  # it may have been created: not sent again
    assert seen == [A]


def test_all_addresses_down_names_them_all_and_no_token() -> None:
    seen: list[str] = []
    with client({A: httpx.ConnectError, B: httpx.ConnectError, C: httpx.ConnectError}, seen) as c:
        with pytest.raises(ConnectionFailed) as err:
            c.list_pools()
    assert A in str(err.value) and C in str(err.value) and TOKEN not in str(err.value)
    assert seen == [A, B, C]


def test_one_address_an_idempotent_request_is_tried_twice() -> None:
    """The replicas behind one data port share it: a new connection reaches a live one."""
    calls = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.RemoteProtocolError("server disconnected", request=request)
        return httpx.Response(200, json={"ok": True})

    with Client(A, token=TOKEN, transport=httpx.MockTransport(flaky)) as c:
        assert c.list_pools() == {"ok": True}
    assert calls["n"] == 2


async def test_the_async_client_fails_over_too() -> None:
    seen: list[str] = []
    transport = httpx.MockTransport(hosts({A: httpx.ConnectError}, seen))
    async with AsyncClient([A, B], token=TOKEN, transport=transport) as c:
        assert await c.list_pools() == {"host": B}
        assert c.base_urls == [A, B] and c.base_url == B


def test_addresses_attempts_start_at_the_last_answer() -> None:
    addr = Addresses([A, B, C])
    addr.answered(2)
    assert list(addr.attempts(idempotent_request=False)) == [2, 0, 1]
    assert addr.moves == 1


def test_settings_api_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERIA_API_URLS", f"{A}/ ,{B}")
    monkeypatch.setenv("INFERIA_API_REPLICAS", "3")
    s = load_settings()
    assert s.api_urls == f"{A},{B}" and s.api_replicas == 3
    assert url_from_settings(s) == f"{A},{B}"
    monkeypatch.setenv("INFERIA_API_URLS", "a.test:8001")
    with pytest.raises(ValueError, match="http://"):
        load_settings()
    monkeypatch.setenv("INFERIA_API_URLS", A)
    monkeypatch.setenv("INFERIA_API_REPLICAS", "0")
    with pytest.raises(ValueError, match="INFERIA_API_REPLICAS"):
        load_settings()


# ---------------------------------------------------------------- the node agent
def agent(down: dict[str, type[httpx.TransportError] | int], seen: list[str]) -> agent_mod.Agent:
    urls = ",".join(f"{u}/inventory/heartbeat" for u in (A, B))
    cfg = agent_mod.AgentConfig(node_id="n", heartbeat_url=urls, token=TOKEN, fallback_url=f"{C}/inventory/heartbeat")
    return agent_mod.Agent(cfg, client=httpx.Client(transport=httpx.MockTransport(hosts(down, seen))))


def test_agent_heartbeat_urls_are_the_list_then_the_fallback() -> None:
    cfg = agent_mod.AgentConfig(node_id="n", heartbeat_url=f"{A}/h, {B}/h", token=TOKEN, fallback_url=f"{C}/h")
    assert cfg.heartbeat_urls == [f"{A}/h", f"{B}/h", f"{C}/h"]


def test_agent_beat_fails_over_and_sticks_then_returns_to_the_first() -> None:
    seen: list[str] = []
    a = agent({A: httpx.ConnectError, B: 503}, seen)
    assert a._beat() == 200
    assert seen == [A, B, C]
    seen.clear()
    assert a._beat() == 200
    assert seen == [C]  # it stays where it was answered
    a._moved_at -= agent_mod.PREFERRED_RETRY_S
    seen.clear()
    a._beat()
    assert seen[0] == A  # the preferred URL again once in a while


def test_agent_beat_refused_with_4xx_is_not_sent_elsewhere() -> None:
    seen: list[str] = []
    a = agent({A: 401}, seen)
    assert a._beat() == 401
    assert seen == [A]


def test_agent_beat_all_down_is_none() -> None:
    seen: list[str] = []
    a = agent({A: httpx.ConnectError, B: httpx.ConnectError, C: httpx.ReadError}, seen)
    assert a._beat() is None
    assert seen == [A, B, C]
