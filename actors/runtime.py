"""What every actor needs to know about the running control plane, and how to find the actors."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import ray

from actors import placement
from actors.placement import POOL_HOST_PREFIX, POOL_HOSTS_ENV  # noqa: F401  (POOL_HOSTS_ENV: re-exported)

NAMESPACE = "inferia"
INVENTORY = "inventory"
DEPLOYMENTS = "deployments"


def pool_hosts_from_env() -> int:
    """INFERIA_POOL_HOSTS of this process: N, or placement.AUTO (unset, `auto`)."""
    return placement.hosts_from_env()


def pool_actor_name(pool_id: str, hosts: int | str | None = None) -> str:
    """The Ray actor that runs a pool (actors/placement.py): `pool:<id>` (an actor of its own), or `pools:<k>`,
    one of the host actors that each run several pools. hosts: INFERIA_POOL_HOSTS (None: this process's)."""
    return placement.actor_name(pool_id, hosts)


def host_index(name: str) -> int | None:
    """k for a `pools:<k>` host actor name; None for a one-pool `pool:<id>` actor."""
    return int(name.removeprefix(POOL_HOST_PREFIX)) if name.startswith(POOL_HOST_PREFIX) else None


@dataclass(frozen=True)
class RuntimeConfig:
    """Serializable; handed to every actor's constructor (and re-used by Ray on actor restart)."""

    dsn: str
    redis_url: str
    data_dir: str
    public_url: str
    heartbeat_interval_s: float = 5.0
    heartbeat_misses: int = 3
    replace_grace_s: float = 0.0
    provision_timeout_s: float = 600.0
    # a rolling update with no new replica ready for this long rolls back (INFERIA_ROLLOUT_DEADLINE_S, issue 12)
    rollout_deadline_s: float = 600.0
    reconcile_interval_s: float = 1.0
    log_level: str = "INFO"
    # the API replica's own HTTP server (no Serve proxy hop); node agents post heartbeats there
    api_host: str = "127.0.0.1"
    data_port: int | None = None
    data_url: str | None = None
    # INFERIA_API_URLS: the API addresses node agents post heartbeats to, comma-separated, in order (they fail
    # over to the next); empty: data_url (or public_url)
    api_urls: str = ""
    # 0: one Ray actor per pool; N > 0: N pool-host actors share the pools (each actor is a ~60 MiB process);
    # placement.AUTO (-1): an actor each for the first pools, hosts beyond (actors/placement.py)
    pool_hosts: int = placement.AUTO
    # a draining node is deprovisioned when idle, or after this long with requests still in flight
    drain_timeout_s: float = 30.0
    # scale from zero (serve_app/hold.py): how long and how many requests per deployment an API replica holds
    hold_timeout_s: float = 120.0
    hold_queue: int = 100
    # retention: events older than this are deleted; terminated node rows this long after their end
    events_retention_s: float = 7 * 86400.0
    terminated_retention_s: float = 86400.0
    # the Fernet key of the deployment keys at rest (actors/secretbox.py); hidden from repr, never logged
    master_key: str = field(default="", repr=False)
    # GET /metrics without a token for clients on loopback (INFERIA_METRICS_OPEN_ON_LOOPBACK)
    metrics_open_on_loopback: bool = False

    @property
    def heartbeat_timeout_s(self) -> float:
        return self.heartbeat_interval_s * self.heartbeat_misses

    @property
    def heartbeat_url(self) -> str:
        """Where node agents post heartbeats: one URL, or with api_urls a comma-separated list in order."""
        bases = [u for u in self.api_urls.split(",") if u] or [self.data_url or self.public_url]
        return ",".join(u.rstrip("/") + "/inventory/heartbeat" for u in bases)

    @property
    def heartbeat_fallback_url(self) -> str | None:
        """Serve's proxy port: stable while the direct-ingress replica restarts."""
        if not self.data_url or self.data_url == self.public_url:
            return None
        return self.public_url.rstrip("/") + "/inventory/heartbeat"

    def to_dict(self, master_key: bool = True) -> dict[str, Any]:
        """master_key=False for the actors that never open a key (inventory, pools: adapters run there)."""
        d = asdict(self)
        if not master_key:
            d["master_key"] = ""
        return d


# Placement on a cluster of several Ray nodes. The actors need no CPU (num_cpus=0), but an actor that asks
# for no resource at all is handed by the GCS to a *random* alive node, whatever its scheduling strategy
# (gcs_actor_scheduler.cc, SelectForwardingNode). A token memory request (1 MiB: well below what an actor
# process uses, so it never limits how many fit) makes the GCS hand the actor to its creator's node instead,
# whose raylet then applies the strategy:
# - inventory and deployments: the default strategy keeps them on the creator's node, the head (next to
#   Serve's controller), as long as the head is not busy;
# - pool actors: SPREAD, round robin over every node (head included). More nodes carry more pools, and the
#   loss of a node takes only its share, which Ray restarts on the surviving nodes (max_restarts=-1) where
#   each rebuilds from Postgres.
# On a single machine there is one node: both place exactly as before.
ACTOR_MEMORY_BYTES = 1024 * 1024
POOL_SCHEDULING_STRATEGY = "SPREAD"


def actor_options(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": NAMESPACE,
        "lifetime": "detached",
        "max_restarts": -1,
        "max_task_retries": -1,
        "num_cpus": 0,
        "memory": ACTOR_MEMORY_BYTES,
        "max_concurrency": 10_000,
        "get_if_exists": True,
    }


def pool_actor_options(name: str) -> dict[str, Any]:
    return actor_options(name) | {"scheduling_strategy": POOL_SCHEDULING_STRATEGY}


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_actor(name: str) -> Any:
    return ray.get_actor(name, namespace=NAMESPACE)


class _BoundMethod:
    def __init__(self, method: Any, pool_id: str) -> None:
        self.method, self.pool_id = method, pool_id

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self.method.remote(self.pool_id, *args, **kwargs)


class PoolRef:
    """A pool's handle: `ref.create_node.remote(...)` calls `create_node(pool_id, ...)` on the actor that
    runs the pool, whether that actor runs this pool only or hosts several."""

    def __init__(self, handle: Any, pool_id: str, name: str) -> None:
        self.handle, self.pool_id, self.name = handle, pool_id, name

    def __getattr__(self, method: str) -> _BoundMethod:
        if method.startswith("_"):
            raise AttributeError(method)
        return _BoundMethod(getattr(self.handle, method), self.pool_id)


def get_pool_actor(pool_id: str, cfg: RuntimeConfig | None = None) -> PoolRef:
    """The pool's actor; created when missing and cfg is given (idempotent: get_if_exists)."""
    name = pool_actor_name(pool_id, cfg.pool_hosts if cfg is not None else None)
    try:
        return PoolRef(ray.get_actor(name, namespace=NAMESPACE), pool_id, name)
    except ValueError:
        if cfg is None:
            raise
    from actors.pool import PoolActor

    key = pool_id if host_index(name) is None else name
    cfg_dict = cfg.to_dict(master_key=False)  # pool actors run the adapters: they never see the master key
    handle = PoolActor.options(**pool_actor_options(name)).remote(key, cfg_dict)  # type: ignore[attr-defined]
    return PoolRef(handle, pool_id, name)


async def call(ref: Any, timeout_s: float = 30.0) -> Any:
    """Await an ObjectRef with a timeout (never block an event loop on ray.get)."""
    return await asyncio.wait_for(ref, timeout_s)


def boot_in_background(boot: Any, name: str) -> None:
    """From an async actor's __init__: boot now (Ray restarts an actor by re-running __init__, and no one
    may call it for a while), retrying until it works. Methods still await boot() themselves."""

    async def run() -> None:
        delay = 0.5
        while True:
            try:
                await boot()
                return
            except Exception as exc:
                logging.getLogger(name).warning("boot failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    asyncio.get_event_loop().create_task(run())


class Loop:
    """A background loop that cannot die: exceptions are logged and the step runs again. The step runs every
    `interval_s`, or sooner when `wake` is set, but never sooner than `min_gap_s` after the previous one ended
    (so a burst of wakes costs one step: the coalescing the routing-table rebuild relies on; a wake after a
    quiet spell runs the step at once, and so does one after a step that returned False: it changed nothing)."""

    def __init__(self, name: str, step: Any, interval_s: float, min_gap_s: float = 0.0) -> None:
        self.name, self.step, self.interval_s, self.min_gap_s = name, step, interval_s, min_gap_s
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.last_duration_s = 0.0
        self.runs = 0
        self.errors = 0

    def start(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        log = logging.getLogger(f"loop.{self.name}")
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            idle = False
            try:
                idle = await self.step() is False
            except asyncio.CancelledError:
                raise
            except Exception:
                self.errors += 1
                log.exception("step failed; continuing")
            self.runs += 1
            ended = loop.time()
            self.last_duration_s = ended - t0
            try:
                await asyncio.wait_for(self.wake.wait(), self.interval_s)
            except TimeoutError:
                pass
            # the gap counts from the end of the previous step: a wake after a quiet spell runs at once, a
            # burst of wakes within the gap is one step at its end
            rest = self.min_gap_s - (loop.time() - ended)
            if rest > 0 and not idle:
                await asyncio.sleep(rest)
            self.wake.clear()
