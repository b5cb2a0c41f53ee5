"""The endpoint rule (actors/endpoints.py) and its hook in InventoryCore.heartbeat: heartbeats sent to the API
cannot move a node's endpoint unless its provider's endpoints move by design, and never onto the control plane."""

from __future__ import annotations

from actors.endpoints import IGNORE, EndpointRule, ProviderRule, own_addresses
from actors.inventory_core import Heartbeat, HeartbeatStatus, InventoryCore
from actors.records import hash_secret
from actors.states import NodeState
from tests.unit.fakes import FakeClock

API = "http://127.0.0.1:8000"
OWN = own_addresses([API, "http://127.0.0.1:8001", "postgresql://u@127.0.0.1:5432/db", "redis://127.0.0.1:6379"])


def _rules(provider: str) -> ProviderRule:
    if provider == "nosana":
        return ProviderRule(True, lambda url: url.startswith("https://") and ".node.k8s.prd.nos.ci" in url)
    return ProviderRule(False, lambda _url: False)


def rule(trusted: frozenset[str] = frozenset()) -> EndpointRule:
    return EndpointRule(own=set(OWN), trusted_hosts=trusted, provider_rule=_rules)


def test_fixed_providers_keep_the_provisioned_endpoint() -> None:
    r = rule()
    for provider in ("kubernetes", "local", "skypilot"):
        assert r.check(provider, "http://10.0.0.5:8000", "http://10.0.0.6:8000") is not None
        assert r.check(provider, None, "http://10.0.0.6:8000") == IGNORE  # before the pool recorded one


def test_never_the_control_plane_itself() -> None:
    r = rule(trusted=frozenset({"127.0.0.1"}))
    for provider in ("local", "kubernetes", "nosana"):
        for url in ("http://127.0.0.1:8000", "http://localhost:8001/v1", "http://[::1]:5432", "http://127.0.0.2:6379"):
            why = r.check(provider, "http://10.0.0.5:1", url)
            assert why and "control plane" in why, (provider, url, why)


def test_moving_endpoints_follow_the_providers_rules() -> None:
    r = rule()
    ok = "https://abc123.node.k8s.prd.nos.ci"
    assert r.check("nosana", None, ok) is None
    assert r.check("nosana", ok, "https://def456.node.k8s.prd.nos.ci/") is None
    for bad in (
        "http://203.0.113.7:9000",  # not the provider's domain
        "http://127.0.0.1:20001",  # loopback
        "http://169.254.169.254/latest/meta-data",  # link-local (cloud metadata)
        "http://0.0.0.0:9000",
        "http://[::ffff:127.0.0.1]:9000",
        "ftp://abc.node.k8s.prd.nos.ci",
        "not a url",
    ):
        assert r.check("nosana", ok, bad), bad
    # the operator's allow-list (a simulated market on one machine)
    assert rule(frozenset({"127.0.0.1"})).check("nosana", ok, "http://127.0.0.1:20001") is None


def _core(provider: str) -> InventoryCore:
    core = InventoryCore(15.0, clock=FakeClock(1000.0), wall=FakeClock(1_700_000_000.0))
    core.endpoint_rule = rule()
    core.register(
        {
            "id": "n1",
            "pool_id": "p",
            "provider": provider,
            "state": NodeState.PROVISIONING,
            "token_hash": hash_secret("tok"),
            "deployment_id": "d",
            "model_name": "m",
            "endpoint": "http://10.0.0.5:8000" if provider != "nosana" else "https://a1.node.k8s.prd.nos.ci",
        }
    )
    return core


def test_a_heartbeat_moving_a_node_onto_the_api_is_refused_and_routes_stay() -> None:
    for provider in ("kubernetes", "local"):
        core = _core(provider)
        assert core.heartbeat(Heartbeat("tok", "n1", state="ready"), checked=True).status == HeartbeatStatus.OK
        before = core.routing_table()
        res = core.heartbeat(Heartbeat("tok", "n1", state="ready", endpoint=API), checked=True)
        assert res.status == HeartbeatStatus.CONFLICT and res.message
        assert core.routing_table() == before
        assert core.nodes["n1"].endpoint == "http://10.0.0.5:8000"
        refused = core.endpoint_rule.take_refused()  # type: ignore[union-attr]
        assert [(e["node_id"], e["to"]) for e in refused] == [("n1", API)]
        # the same endpoint again is fine; the provider's own health report (not checked) may move it
        assert core.heartbeat(Heartbeat("tok", "n1", endpoint="http://10.0.0.5:8000"), checked=True).status == 200
        assert core.heartbeat(Heartbeat("tok", "n1", endpoint="http://10.0.0.9:8000")).status == 200
        assert core.nodes["n1"].endpoint == "http://10.0.0.9:8000"


def test_a_nosana_redeploy_moves_the_endpoint() -> None:
    core = _core("nosana")
    new = "https://b2.node.k8s.prd.nos.ci"
    assert core.heartbeat(Heartbeat("tok", "n1", state="ready", endpoint=new), checked=True).status == 200
    assert core.routing_table()["models"]["m"][0]["endpoint"] == new
    res = core.heartbeat(Heartbeat("tok", "n1", state="ready", endpoint="http://10.1.2.3:80"), checked=True)
    assert res.status == HeartbeatStatus.CONFLICT
    assert core.nodes["n1"].endpoint == new


def test_an_early_agent_heartbeat_does_not_supply_the_endpoint() -> None:
    core = _core("local")
    core.nodes["n1"].endpoint = None
    res = core.heartbeat(Heartbeat("tok", "n1", state="ready", endpoint="http://10.0.0.7:1"), checked=True)
    assert res.status == HeartbeatStatus.OK
    assert core.nodes["n1"].endpoint is None and core.nodes["n1"].engine_ready
