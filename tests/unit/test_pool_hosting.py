"""Where a pool runs: INFERIA_POOL_HOSTS=auto (the default: an actor each for the first pools, host actors
beyond, the placement kept in the pool's id), 0 (one actor per pool), or N host actors sharing them."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from actors import placement
from actors.placement import AUTO, AUTO_OWN_ACTORS, host_of, host_slots, new_pool_id
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
    assert load_settings(INFERIA_POOL_HOSTS="0").pool_hosts_value == 0
    with pytest.raises(ValueError, match="INFERIA_POOL_HOSTS"):
        load_settings(INFERIA_POOL_HOSTS=-1)
    with pytest.raises(ValueError, match="INFERIA_POOL_HOSTS"):
        load_settings(INFERIA_POOL_HOSTS=1025)


def test_auto_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFERIA_POOL_HOSTS", raising=False)
    assert load_settings().pool_hosts == "auto"
    assert load_settings().pool_hosts_value == AUTO
    assert load_settings(INFERIA_POOL_HOSTS="auto").pool_hosts_value == AUTO
    assert placement.hosts_from_env() == AUTO
    monkeypatch.setenv("INFERIA_POOL_HOSTS", "3")
    assert placement.hosts_from_env() == 3


def _create(count: int, slots: int, existing: list[str] | None = None) -> list[str]:
    """Create `count` pools one after the other under auto, as POST /v1/pools does."""
    ids = list(existing or [])
    for _ in range(count):
        ids.append(new_pool_id(ids, AUTO, slots))
    return ids


def test_auto_gives_the_first_pools_an_actor_each_and_hosts_the_rest_evenly() -> None:
    ids = _create(100, slots=4)
    names = [pool_actor_name(p, AUTO) for p in ids]
    assert names[:AUTO_OWN_ACTORS] == [f"pool:{p}" for p in ids[:AUTO_OWN_ACTORS]]
    hosted = Counter(names[AUTO_OWN_ACTORS:])
    assert set(hosted) == {"pools:0", "pools:1", "pools:2", "pools:3"}
    assert max(hosted.values()) - min(hosted.values()) <= 1  # least-used host first
    assert len(set(names)) == AUTO_OWN_ACTORS + 4  # 8 + 4 processes for 100 pools, not 100


def test_auto_placement_is_stable_as_pools_are_added_and_the_cluster_grows() -> None:
    first = _create(20, slots=2)
    before = {p: pool_actor_name(p, AUTO) for p in first}
    # a restart (nothing but the ids, read back from Postgres) and more pools on a larger cluster
    later = _create(30, slots=8, existing=first)
    assert {p: pool_actor_name(p, AUTO) for p in first} == before
    assert len(set(later)) == len(later)  # ids stay unique
    # every pool has exactly one actor: the host rebuilding from Postgres claims the same pools as the callers
    for name in {pool_actor_name(p, AUTO) for p in later}:
        claimed = [p for p in later if pool_actor_name(p, AUTO) == name]
        assert claimed and all(pool_actor_name(p, AUTO) == name for p in claimed)
    assert Counter(host_of(p) for p in later[20:]).most_common(1)[0][1] <= 5  # new hosts take the new pools
    # a deleted pool frees its share: the next one fills the least-used host
    assert host_of(new_pool_id([p for p in later if host_of(p) != 0], AUTO, 8)) == 0


def test_explicit_settings_keep_their_rule_for_every_id() -> None:
    ids = _create(12, slots=4)
    assert all(new_pool_id(ids, 0, 4).count("-") == 1 for _ in range(3))  # plain ids outside auto
    assert all(new_pool_id(ids, 2, 4).count("-") == 1 for _ in range(3))
    for p in ids:
        assert pool_actor_name(p, 0) == f"pool:{p}"
        assert pool_actor_name(p, 2) in {"pools:0", "pools:1"}
        assert pool_actor_name(p, "2") == pool_actor_name(p, 2)
    # ids from before auto (or from an explicit setting) keep an actor of their own under auto
    assert pool_actor_name("pool-0123456789ab", AUTO) == "pool:pool-0123456789ab"


def test_only_a_well_formed_tag_names_a_host() -> None:
    assert host_of("pool-0123456789ab-h3") == 3
    assert host_of("pool-0123456789ab-h12") == 12
    for plain in ("pool-0123456789ab", "pool-hello", "pool-x-h", "pool-x-h03", "-h1", "pool-x-h1a"):
        assert host_of(plain) is None, plain
    assert host_slots(None) == 2 and host_slots(1) == 2 and host_slots(6) == 6 and host_slots(96) == 16


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
