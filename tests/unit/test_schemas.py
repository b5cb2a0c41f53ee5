"""Request bodies: what is accepted, what is refused, and that errors point at the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from actors.inventory_core import Heartbeat
from serve_app.schemas import (
    DeploymentCreate,
    DeploymentPatch,
    HeartbeatBatch,
    HeartbeatIn,
    ModelCreate,
    PoolCreate,
    PoolScale,
)


def errors(model: type[BaseModel], data: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return [dict(e) for e in info.value.errors()]


def locs(model: type[BaseModel], data: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [tuple(e["loc"]) for e in errors(model, data)]


def messages(model: type[BaseModel], data: dict[str, Any]) -> str:
    return " | ".join(str(e["msg"]) for e in errors(model, data))


# ------------------------------------------------------------------------------------------- names
GOOD_NAMES = ["a", "p1", "gpu-pool", "llama-3.1-8b", "a_b", "x" * 63, "0pool"]
BAD_NAMES = ["", "A", "Pool", "-a", "a-", ".a", "a.", "a b", "a/b", "pool!", "x" * 64, "é", "a\n"]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names(name: str) -> None:
    assert PoolCreate(name=name).name == name
    assert ModelCreate(name=name, engine="ollama", source="llama3").name == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_pool_names_point_at_name(name: str) -> None:
    errs = errors(PoolCreate, {"name": name})
    assert [tuple(e["loc"]) for e in errs] == [("name",)]
    assert "lowercase" in str(errs[0]["msg"])


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_model_names_point_at_name(name: str) -> None:
    assert ("name",) in locs(ModelCreate, {"name": name, "engine": "ollama", "source": "llama3"})


# ------------------------------------------------------------------------------------------- pools
def test_pool_defaults() -> None:
    p = PoolCreate(name="p")
    assert (p.provider, p.region, p.min_nodes, p.max_nodes, p.target_nodes) == ("local", "local", 0, 16, 0)
    assert p.allowed_gpu_types == [] and p.provider_config == {}
    assert p.max_cost_per_hour is None and p.credential_ref is None


def test_pool_bounds_accepted() -> None:
    p = PoolCreate(name="p", min_nodes=2, max_nodes=2, target_nodes=2)
    assert (p.min_nodes, p.max_nodes, p.target_nodes) == (2, 2, 2)


def test_pool_min_above_max_is_refused() -> None:
    assert "min_nodes must be <= max_nodes" in messages(PoolCreate, {"name": "p", "min_nodes": 5, "max_nodes": 2})


def test_pool_target_above_max_is_refused() -> None:
    msg = messages(PoolCreate, {"name": "p", "target_nodes": 5, "max_nodes": 2})
    assert "target_nodes must be <= max_nodes" in msg


def test_pool_min_above_max_error_location_names_the_field() -> None:
    """The API turns the first error's location into the 422 `field`; a model-level error has none."""
    loc = locs(PoolCreate, {"name": "p", "min_nodes": 5, "max_nodes": 2})[0]
    assert loc and loc[0] in ("min_nodes", "max_nodes"), f"error location is {loc!r}"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_nodes", -1),
        ("max_nodes", -1),
        ("max_nodes", 10_001),
        ("target_nodes", -1),
        ("max_cost_per_hour", -0.01),
        ("min_nodes", "many"),
        ("allowed_gpu_types", "A100"),
        ("provider_config", ["x"]),
    ],
)
def test_pool_field_errors_point_at_the_field(field: str, value: Any) -> None:
    assert locs(PoolCreate, {"name": "p", field: value})[0][0] == field


def test_pool_unknown_field_is_refused() -> None:
    assert locs(PoolCreate, {"name": "p", "max_node": 3}) == [("max_node",)]


def test_pool_name_is_required() -> None:
    assert locs(PoolCreate, {}) == [("name",)]


@pytest.mark.parametrize("target", [-1, 10_001])
def test_pool_scale_bounds(target: int) -> None:
    assert locs(PoolScale, {"target_nodes": target}) == [("target_nodes",)]
    assert PoolScale(target_nodes=3).target_nodes == 3


# ------------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("engine", ["llamacpp", "vllm", "ollama"])
def test_model_source_required_for_non_custom_engines(engine: str) -> None:
    assert f"source is required for engine {engine}" in messages(ModelCreate, {"name": "m", "engine": engine})
    assert f"source is required for engine {engine}" in messages(
        ModelCreate, {"name": "m", "engine": engine, "source": ""}
    )
    ok = ModelCreate.model_validate({"name": "m", "engine": engine, "source": "org/model"})
    assert ok.source == "org/model"


def test_model_missing_source_error_location_names_the_field() -> None:
    loc = locs(ModelCreate, {"name": "m", "engine": "vllm"})[0]
    assert loc == ("source",), f"error location is {loc!r}"


def test_custom_engine_needs_args_not_source() -> None:
    assert "args (the command line) is required" in messages(ModelCreate, {"name": "m", "engine": "custom"})
    m = ModelCreate(name="m", engine="custom", args=["python", "-m", "server"])
    assert m.source is None and m.args == ["python", "-m", "server"]


def test_model_unknown_engine() -> None:
    assert locs(ModelCreate, {"name": "m", "engine": "tgi", "source": "x"}) == [("engine",)]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("port", 0),
        ("port", 65536),
        ("gpus", -1),
        ("gpus", 65),
        ("gpu_memory_mb", -1),
        ("health_path", "health"),
        ("env", {"A": 1}),
        ("args", "serve"),
    ],
)
def test_model_field_errors_point_at_the_field(field: str, value: Any) -> None:
    data = {"name": "m", "engine": "vllm", "source": "org/m", field: value}
    assert locs(ModelCreate, data)[0][0] == field


def test_model_health_path() -> None:
    assert ModelCreate(name="m", engine="vllm", source="s", health_path="/health").health_path == "/health"
    assert "must start with '/'" in messages(
        ModelCreate, {"name": "m", "engine": "vllm", "source": "s", "health_path": "v1/models"}
    )


def test_model_extra_field_refused() -> None:
    assert ("sorce",) in locs(ModelCreate, {"name": "m", "engine": "vllm", "source": "s", "sorce": "x"})


# ------------------------------------------------------------------------------------------- deployments
def test_deployment_create() -> None:
    d = DeploymentCreate(model="m", pool="p")
    assert d.replicas == 1
    assert DeploymentCreate(model="m", pool="p", replicas=0).replicas == 0


@pytest.mark.parametrize("replicas", [-1, 1001, "two"])
def test_deployment_replicas_bounds(replicas: Any) -> None:
    assert locs(DeploymentCreate, {"model": "m", "pool": "p", "replicas": replicas}) == [("replicas",)]
    assert locs(DeploymentPatch, {"replicas": replicas}) == [("replicas",)]


def test_deployment_requires_model_and_pool() -> None:
    assert sorted(locs(DeploymentCreate, {})) == [("model",), ("pool",)]
    assert locs(DeploymentCreate, {"model": "m", "pool": "p", "extra": 1}) == [("extra",)]


# ------------------------------------------------------------------------------------------- heartbeats
def test_heartbeat_by_node_id() -> None:
    hb = HeartbeatIn(node_id="n1")
    assert (hb.state, hb.health_score) == ("ready", 100)


def test_heartbeat_by_provider_identity() -> None:
    hb = HeartbeatIn(provider="nosana", provider_instance_id="job-1", previous_provider_instance_id="job-0")
    assert hb.node_id is None


@pytest.mark.parametrize(
    "data",
    [{}, {"provider": "nosana"}, {"provider_instance_id": "job-1"}, {"node_id": ""}, {"state": "ready"}],
)
def test_heartbeat_without_identity_is_refused(data: dict[str, Any]) -> None:
    assert "node_id, or provider and provider_instance_id, is required" in messages(HeartbeatIn, data)


@pytest.mark.parametrize("endpoint", ["10.0.0.1:8000", "ftp://x", "localhost", "", "HTTP//x"])
def test_heartbeat_bad_endpoint_points_at_endpoint(endpoint: str) -> None:
    errs = errors(HeartbeatIn, {"node_id": "n1", "endpoint": endpoint})
    assert [tuple(e["loc"]) for e in errs] == [("endpoint",)]
    assert "http(s) URL" in str(errs[0]["msg"])


@pytest.mark.parametrize("endpoint", ["http://10.0.0.1:8000", "https://node.example.com/v1"])
def test_heartbeat_good_endpoint(endpoint: str) -> None:
    assert HeartbeatIn(node_id="n1", endpoint=endpoint).endpoint == endpoint


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("state", "dead"),
        ("health_score", 101),
        ("health_score", -1),
        ("cpu_percent", -1),
        ("node_id", "x" * 129),
        ("reason", "x" * 1001),
        ("token", "t" * 257),
    ],
)
def test_heartbeat_field_errors_point_at_the_field(field: str, value: Any) -> None:
    assert locs(HeartbeatIn, {"node_id": "n1", field: value})[0][0] == field


def test_heartbeat_ignores_unknown_fields() -> None:
    hb = HeartbeatIn.model_validate({"node_id": "n1", "agent_version": "1.2"})
    assert not hasattr(hb, "agent_version")


def test_heartbeat_to_core() -> None:
    hb = HeartbeatIn(node_id="n1", state="starting", health_score=50, cpu_percent=12.5, gpu_util=0.0)
    core = hb.to_core("header-token")
    assert core["token"] == "header-token"
    assert core["metrics"] == {"cpu_percent": 12.5, "gpu_util": 0.0}
    assert core["state"] == "starting" and core["health_score"] == 50
    # a token in the body (batched beats) wins over the header
    assert HeartbeatIn(node_id="n1", token="body-token").to_core("header-token")["token"] == "body-token"


def test_heartbeat_to_core_feeds_the_inventory() -> None:
    hb = Heartbeat(**HeartbeatIn(provider="p", provider_instance_id="i").to_core("t"))
    assert (hb.provider, hb.provider_instance_id, hb.token) == ("p", "i", "t")


def test_heartbeat_batch_error_location() -> None:
    errs = errors(HeartbeatBatch, {"heartbeats": [{"node_id": "n1"}, {"node_id": "n2", "state": "x"}]})
    assert tuple(errs[0]["loc"])[:3] == ("heartbeats", 1, "state")


def test_engine_names_are_the_catalogs() -> None:
    """The API accepts exactly the engines of the catalog (adapters/engines.py)."""
    from typing import get_args

    from adapters.engines import ENGINE_NAMES
    from serve_app.schemas import EngineName

    assert set(get_args(EngineName)) == set(ENGINE_NAMES)


def test_heartbeat_seq_and_start_id_are_optional_and_validated() -> None:
    hb = HeartbeatIn(node_id="n1", seq=3, start_id="a1b2c3")
    assert hb.to_core(None)["seq"] == 3 and hb.to_core(None)["start_id"] == "a1b2c3"
    assert HeartbeatIn(node_id="n1").to_core(None)["seq"] is None
    for bad in (-1, "5", True, 2**63, 1.5):
        assert [tuple(e["loc"]) for e in errors(HeartbeatIn, {"node_id": "n1", "seq": bad})] == [("seq",)]
    for bad in ("", "x" * 65, "a b", "é"):
        assert [tuple(e["loc"]) for e in errors(HeartbeatIn, {"node_id": "n1", "start_id": bad})] == [("start_id",)]
