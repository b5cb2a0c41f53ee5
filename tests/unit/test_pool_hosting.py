"""Where a pool runs: one actor per pool by default, or INFERIA_POOL_HOSTS host actors sharing them."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from actors.runtime import PoolRef, host_index, pool_actor_name
from controller.config import load_settings


def test_one_actor_per_pool_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFERIA_POOL_HOSTS", raising=False)
    assert pool_actor_name("pool-abc") == "pool:pool-abc"
    assert pool_actor_name("pool-abc", 0) == "pool:pool-abc"
    assert host_index("pool:pool-abc") is None


def test_hosts_share_pools_stably_and_evenly() -> None:
    ids = [f"pool-{i:012x}" for i in range(1000)]
    names = [pool_actor_name(p, 4) for p in ids]
    assert names == [pool_actor_name(p, 4) for p in ids]  # the same host every time, in every process
    counts = Counter(names)
    assert set(counts) == {"pools:0", "pools:1", "pools:2", "pools:3"}
    assert min(counts.values()) > 200  # about 250 each
    assert host_index("pools:3") == 3


def test_hosts_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERIA_POOL_HOSTS", "2")
    assert pool_actor_name("pool-x").startswith("pools:")
    monkeypatch.setenv("INFERIA_POOL_HOSTS", "nonsense")
    assert pool_actor_name("pool-x") == "pool:pool-x"


def test_settings_bound_the_number_of_hosts() -> None:
    assert load_settings(INFERIA_POOL_HOSTS=8).pool_hosts == 8
    with pytest.raises(ValueError, match="INFERIA_POOL_HOSTS"):
        load_settings(INFERIA_POOL_HOSTS=-1)


def test_pool_ref_adds_the_pool_id_to_every_call() -> None:
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    class Method:
        def __init__(self, name: str) -> None:
            self.name = name

        def remote(self, *args: Any, **kwargs: Any) -> str:
            calls.append((self.name, args, kwargs))
            return "ref"

    class Handle:
        def __getattr__(self, name: str) -> Method:
            return Method(name)

    ref = PoolRef(Handle(), "pool-1", "pools:0")
    assert ref.create_node.remote("node-1", None) == "ref"
    ref.terminate_node.remote("node-1", reason="gone")
    assert calls == [
        ("create_node", ("pool-1", "node-1", None), {}),
        ("terminate_node", ("pool-1", "node-1"), {"reason": "gone"}),
    ]
    with pytest.raises(AttributeError):
        ref._private  # noqa: B018
