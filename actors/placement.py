"""Where a pool runs (INFERIA_POOL_HOSTS): the Ray actor that hosts it, from its id alone.

- `0`: one actor per pool, `pool:<id>`;
- `N` > 0: N host actors `pools:<k>` share every pool, k = crc32(id) % N;
- `auto` (the default): one actor per pool for the first AUTO_OWN_ACTORS pools; a pool created beyond them
  is given a host when it is created, and its id carries it: `pool-<hex>-h<k>` runs in `pools:<k>`.

The placement under `auto` is decided once, at creation, and stored with the pool in PostgreSQL as part of
its id, so that every process (API replicas, the deployments actor, `down`, the Python handles, a host
rebooting its pools) finds the same actor with nothing but the id: a restart of `up`, more pools, more
cores or Ray nodes later move no existing pool, and no pool is run by two actors nor by none. The number of
hosts a new pool is spread over (about one per core of the Ray cluster, AUTO_MAX_HOSTS at most) may grow
with the cluster; an existing pool keeps its k.
"""

from __future__ import annotations

import os
import zlib
from collections import Counter
from collections.abc import Iterable

from actors.records import new_id

POOL_HOSTS_ENV = "INFERIA_POOL_HOSTS"
POOL_HOST_PREFIX = "pools:"
AUTO = -1  # INFERIA_POOL_HOSTS=auto, as an int (RuntimeConfig, runtime.json)
# auto: pools below this count get an actor (a ~60 MiB process) each, isolated from one another
AUTO_OWN_ACTORS = 8
AUTO_MIN_HOSTS = 2
AUTO_MAX_HOSTS = 16
HOST_TAG = "-h"


def parse_hosts(value: int | str | None) -> int:
    """INFERIA_POOL_HOSTS as an int: N >= 0 as given, AUTO for `auto`, unset or unreadable."""
    if isinstance(value, int):
        return value if value >= 0 else AUTO
    text = (value or "").strip().lower()
    if text.isdigit():
        return int(text)
    return AUTO


def hosts_from_env() -> int:
    return parse_hosts(os.environ.get(POOL_HOSTS_ENV))


def host_of(pool_id: str) -> int | None:
    """k for an id created under `auto` beyond the first pools (`pool-<hex>-h<k>`); None otherwise."""
    head, tag, k = pool_id.rpartition(HOST_TAG)
    if not tag or not head or not k.isdigit() or k != str(int(k)):
        return None
    return int(k)


def actor_name(pool_id: str, hosts: int | str | None = None) -> str:
    """The name of the Ray actor that runs the pool under the setting `hosts` (None: this process's env)."""
    n = hosts_from_env() if hosts is None else parse_hosts(hosts)
    if n == 0:
        return f"pool:{pool_id}"
    if n > 0:
        return f"{POOL_HOST_PREFIX}{zlib.crc32(pool_id.encode()) % n}"
    k = host_of(pool_id)
    return f"pool:{pool_id}" if k is None else f"{POOL_HOST_PREFIX}{k}"


def host_slots(cpus: float | None) -> int:
    """How many hosts `auto` spreads new pools over: about one per core of the cluster, within bounds."""
    return max(AUTO_MIN_HOSTS, min(AUTO_MAX_HOSTS, int(cpus or 0)))


def cluster_cpus() -> float | None:
    """The CPUs of the Ray cluster this process is part of (every Ray node's), else this machine's."""
    try:
        import ray

        if ray.is_initialized():
            return float(ray.cluster_resources().get("CPU") or 0) or None
    except Exception:  # the GCS unreachable for a moment: this machine's count will do
        pass
    return float(os.cpu_count() or 1)


def new_pool_id(existing: Iterable[str], hosts: int | str | None, slots: int) -> str:
    """The id of a new pool, given the ids of the pools that exist (not deleted). Under `auto` beyond the
    first AUTO_OWN_ACTORS pools it names the least-used of `slots` hosts (the lowest k on a tie); under an
    explicit setting it is a plain id (the setting alone places it)."""
    base = new_id("pool")
    ids = list(existing)
    if parse_hosts(hosts) != AUTO or len(ids) < AUTO_OWN_ACTORS:
        return base
    used = Counter(k for k in (host_of(i) for i in ids) if k is not None)
    k = min(range(max(1, slots)), key=lambda i: (used[i], i))
    return f"{base}{HOST_TAG}{k}"
