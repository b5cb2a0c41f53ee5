"""Boot and stop the control plane: storage, Redis, Ray, the actors and the Serve API.

After any restart every actor rebuilds its state from Postgres and then from provider truth;
boot only makes sure the actors exist (detached, named, get-if-exists) and waits until they answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from actors.records import hash_secret
from actors.runtime import (
    DEPLOYMENTS,
    INVENTORY,
    NAMESPACE,
    RuntimeConfig,
    actor_options,
    get_pool_actor,
    pool_actor_name,
)
from actors.secretbox import load_or_create_master_key
from actors.states import PoolState
from actors.storage import Store
from controller import runtime_file
from controller.config import Settings
from controller.runtime_file import RuntimeInfo
from controller.services import EmbeddedPostgres, EmbeddedRedis, redis_url

log = logging.getLogger(__name__)

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_DEDUP_LOGS": "0"}


def token_file(settings: Settings) -> Path:
    return settings.data_dir / "api_token"


def load_or_create_api_token(settings: Settings) -> tuple[str, bool]:
    """INFERIA_API_TOKEN, else the token stored (0600) in the data dir, else a new one. (token, created)."""
    if settings.api_token is not None:
        return settings.api_token.get_secret_value(), False
    path = token_file(settings)
    if path.exists():
        return path.read_text().strip(), False
    token = "it_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


async def _migrate(dsn: str, master_key: str | None = None) -> int:
    store = await Store.connect(dsn, migrate=True, master_key=master_key)
    try:
        sealed = await store.seal_plain_keys()  # keys stored in clear by an older version: encrypted in place
        if sealed:
            log.info("encrypted %d deployment key(s) stored in clear", sealed)
        return await store.schema_version()
    finally:
        await store.close()


async def _active_pools(dsn: str) -> list[str]:
    store = await Store.connect(dsn)
    try:
        return [p.id for p in await store.list_pools() if p.state in (PoolState.ACTIVE, PoolState.DELETING)]
    finally:
        await store.close()


class Stage:
    """What one start-up stage reports when it ends: a short detail for the stage's line."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.detail = ""


class Progress:
    """Start-up stages as `up` shows them (services, Ray, actors, API); the default shows nothing."""

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        yield Stage(name)


@dataclass
class ControlPlane:
    settings: Settings
    keep_nodes: bool = True
    timings: dict[str, float] = field(default_factory=dict)
    api_token: str = ""
    token_created: bool = False
    cfg: RuntimeConfig | None = None
    master_key: str = field(default="", repr=False)  # of the keys at rest (actors/secretbox.py)
    runtime: RuntimeInfo | None = None
    log_file: Path | None = None  # where `up` sends the full logs (recorded in runtime.json)
    _pg: EmbeddedPostgres | None = None
    _redis: EmbeddedRedis | None = None
    _ray_started_here: bool = False
    _direct: bool = False

    @property
    def api_url(self) -> str:
        assert self.settings.public_url is not None
        return self.settings.public_url

    @property
    def data_url(self) -> str:
        """The direct-ingress URL of the API replica (same routes as api_url, no proxy hop)."""
        if not self._direct:
            return self.api_url
        host = urlsplit(self.api_url).hostname or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.settings.data_port_or_default}"

    @property
    def ray_address(self) -> str | None:
        return self.runtime.ray_address if self.runtime else None

    @property
    def dashboard_url(self) -> str | None:
        return self.runtime.dashboard_url if self.runtime else None

    def start(self, progress: Progress | None = None) -> None:
        """Services, Ray, actors, API, in this order. The runtime file is written first (state `starting`,
        this pid), completed after each stage and marked `running` once the API answers."""
        p = progress or Progress()
        t0 = time.monotonic()
        s = self.settings
        s.ensure_data_dir()
        self.runtime = runtime_file.claim(s.data_dir)
        self.runtime.log_file = str(self.log_file) if self.log_file else None
        self.runtime.pool_hosts = s.pool_hosts_value
        self._record()
        self.api_token, self.token_created = load_or_create_api_token(s)
        try:
            self._start_stages(p, t0)
        except BaseException:
            if self.token_created:  # never shown: the next start creates (and shows) a new one
                token_file(s).unlink(missing_ok=True)
                self.token_created = False
            raise

    def _start_stages(self, p: Progress, t0: float) -> None:
        s = self.settings
        assert self.runtime is not None
        env_key = s.master_key.get_secret_value() if s.master_key else None
        self.master_key, _ = load_or_create_master_key(s.data_dir, env_key)

        with p.stage("services") as st:
            if s.postgres_dsn is None:
                self._pg = EmbeddedPostgres(s.data_dir / "pgdata")
                dsn = self._pg.start()
            else:
                dsn = s.postgres_dsn.get_secret_value()
            if s.redis_host is None:
                self._redis = EmbeddedRedis(s.data_dir / "redis")
                rurl = self._redis.start()
            else:
                pw = s.redis_password.get_secret_value() if s.redis_password else None
                rurl = redis_url(s.redis_host, s.redis_port, pw)
            version = asyncio.run(_migrate(dsn, self.master_key))
            log.info("database schema at version %d", version)
            pg = "embedded PostgreSQL" if self._pg else "PostgreSQL"
            redis = f"embedded Redis on 127.0.0.1:{self._redis.port}" if self._redis else f"Redis at {s.redis_host}"
            st.detail = f"{pg} (schema v{version}), {redis}"
            self.runtime.postgres_embedded = self._pg is not None
            self.runtime.redis_embedded = self._redis is not None
            self.runtime.redis_url = rurl if self._redis is not None else None
            if self._redis is not None:
                self.runtime.ports["redis"] = self._redis.port
            self._record()
        self.timings["services_s"] = time.monotonic() - t0

        assert s.public_url is not None
        self.cfg = RuntimeConfig(
            dsn=dsn,
            redis_url=rurl,
            data_dir=str(s.data_dir),
            public_url=s.public_url,
            heartbeat_interval_s=s.heartbeat_interval_s,
            heartbeat_misses=s.heartbeat_misses,
            replace_grace_s=s.replace_grace_s if s.replace_grace_s is not None else 2 * s.heartbeat_interval_s,
            provision_timeout_s=s.provision_timeout_s,
            rollout_deadline_s=s.rollout_deadline_s,
            reconcile_interval_s=s.reconcile_interval_s,
            log_level=s.log_level,
            pool_hosts=s.pool_hosts_value,
            drain_timeout_s=s.drain_timeout_s,
            hold_timeout_s=s.hold_timeout_s,
            hold_queue=s.hold_queue,
            events_retention_s=s.events_retention_s,
            terminated_retention_s=s.terminated_retention_s,
            master_key=self.master_key,
            metrics_open_on_loopback=s.metrics_open_on_loopback,
            api_urls=s.api_urls or "",
        )
        if s.direct_ingress:
            # measured here (bench/heartbeats.py): ~240 single heartbeats/s through Serve's proxy actor,
            # ~1,200/s served by the replica itself. The API replica runs its own HTTP server on data_port
            # (the same FastAPI app, SO_REUSEADDR so a restarted replica rebinds at once); the proxy keeps
            # api_port. Node agents post heartbeats to data_port and fall back to api_port.
            self._direct = True
            self.cfg = dataclasses.replace(
                self.cfg, api_host=s.api_host, data_port=s.data_port_or_default, data_url=self.data_url
            )
        t1 = time.monotonic()
        with p.stage("Ray") as st:
            self._start_ray()
            where = "local (started here)" if self._ray_started_here else "joined"
            st.detail = f"{where} at {self.ray_address}" + (
                f", dashboard {self.dashboard_url}" if self.dashboard_url else ", no dashboard"
            )
            self._record()
        self.timings["ray_s"] = time.monotonic() - t1
        t2 = time.monotonic()
        with p.stage("actors") as st:
            pools = self._start_actors(dsn)
            st.detail = f"inventory, deployments, {pools} pool(s)"
        self.timings["actors_s"] = time.monotonic() - t2
        t3 = time.monotonic()
        with p.stage("API") as st:
            self._start_serve()
            st.detail = self.api_url + (f" (data port {self.data_url})" if self._direct else "")
            if s.api_replicas > 1:
                st.detail += f", {s.api_replicas} API replicas"
            self.runtime.api_url = self.api_url
            self.runtime.data_url = self.data_url
            self.runtime.ports.update(api=s.api_port, **({"data": s.data_port_or_default} if self._direct else {}))
            self.runtime.state = runtime_file.RUNNING
            self._record()
        self.timings["serve_s"] = time.monotonic() - t3
        self.timings["total_s"] = time.monotonic() - t0

    def _record(self) -> None:
        assert self.runtime is not None
        runtime_file.write(self.settings.data_dir, self.runtime)

    def _start_ray(self) -> None:
        import ray

        for k, v in RAY_ENV.items():
            os.environ.setdefault(k, v)
        assert self.runtime is not None
        dashboard: str | None = None
        if not ray.is_initialized():
            address = self.settings.ray_address
            kwargs: dict[str, Any] = {"namespace": NAMESPACE, "log_to_driver": True}
            if address:
                dashboard = ray.init(address=address, **kwargs).dashboard_url
            else:
                dash: dict[str, Any] = {"include_dashboard": self.settings.dashboard}
                if self.settings.dashboard:  # never on 0.0.0.0: its job API runs any code it is sent
                    dash.update(dashboard_host="127.0.0.1", dashboard_port=self.settings.dashboard_port)
                ctx = ray.init(
                    address="local",  # always a new local instance, never a stray `ray start` cluster
                    object_store_memory=200 * 1024 * 1024,
                    **dash,
                    **kwargs,
                )
                dashboard = ctx.dashboard_url if self.settings.dashboard else None
                self._ray_started_here = True
        self.runtime.ray_address = ray.get_runtime_context().gcs_address
        self.runtime.ray_started_here = self._ray_started_here
        self.runtime.namespace = NAMESPACE
        if dashboard:
            self.runtime.dashboard_url = dashboard if dashboard.startswith("http") else f"http://{dashboard}"
            port = urlsplit(self.runtime.dashboard_url).port
            if port:
                self.runtime.ports["dashboard"] = port

    def _start_actors(self, dsn: str) -> int:
        import ray

        from actors.deployment import DeploymentActor
        from actors.inventory import InventoryActor

        assert self.cfg is not None
        cfg = self.cfg.to_dict()
        no_key = self.cfg.to_dict(master_key=False)  # the inventory opens no key
        inv = InventoryActor.options(**actor_options(INVENTORY)).remote(no_key)  # type: ignore[attr-defined]
        ray.get(inv.ready.remote(), timeout=120)
        pools = asyncio.run(_active_pools(dsn))
        handles = [get_pool_actor(pid, self.cfg) for pid in pools]
        ray.get([h.ready.remote() for h in handles], timeout=300)
        dep = DeploymentActor.options(**actor_options(DEPLOYMENTS)).remote(cfg)  # type: ignore[attr-defined]
        ray.get(dep.ready.remote(), timeout=120)
        log.info("actors ready: inventory, deployments, %d pool(s)", len(pools))
        return len(pools)

    def _start_serve(self) -> None:
        from ray import serve

        from serve_app.app import APP_NAME, build

        assert self.cfg is not None
        serve.start(http_options={"host": self.settings.api_host, "port": self.settings.api_port})
        app = build(self.cfg, hash_secret(self.api_token), replicas=self.settings.api_replicas)
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        self.wait_healthy(self.api_url)
        if self._direct:
            self.wait_healthy(self.data_url)

    def wait_healthy(self, url: str, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        last: Exception | str | None = None
        with httpx.Client(timeout=5, trust_env=False) as c:
            while time.monotonic() < deadline:
                try:
                    r = c.get(url + "/healthz")
                    if r.status_code == 200:
                        return
                    last = f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    last = exc
                time.sleep(0.2)
        raise RuntimeError(f"API did not become healthy at {url}: {last}")

    def stop(self) -> None:
        """Stop what this process started. Nodes keep running unless keep_nodes is False."""
        import ray

        if ray.is_initialized():
            try:
                self._stop_actors()
            except Exception:
                log.exception("stopping actors")
            if self._ray_started_here:
                # Ray object refs and handles left in reference cycles (a failed test's traceback, a closure) are
                # freed now, while Ray is up: one freed by the garbage collector after ray.shutdown() makes Ray
                # end the whole process ("the core worker has already been shutdown"), exit code 1
                gc.collect()
                ray.shutdown()
        # embedded servers: also those of a crashed predecessor when this start was cut short before them
        s = self.settings
        if self._redis is None and s.redis_host is None:
            self._redis = EmbeddedRedis(s.data_dir / "redis")
        if self._pg is None and s.postgres_dsn is None:
            self._pg = EmbeddedPostgres(s.data_dir / "pgdata")
        if self._redis:
            self._redis.stop()
        if self._pg:
            self._pg.stop()
        runtime_file.remove(self.settings.data_dir, pid=os.getpid())

    def _stop_actors(self) -> None:
        import ray
        from ray import serve

        # first: nothing may replace replicas while we stop (heartbeats stop reaching us once Serve is down)
        with_suppress_kill(DEPLOYMENTS)
        if not self.keep_nodes and self.cfg is not None:
            pools = asyncio.run(_active_pools(self.cfg.dsn))
            hosts = self.cfg.pool_hosts
            handles = [get_pool_actor(pid, self.cfg) for pid in pools if _exists(pool_actor_name(pid, hosts))]
            if handles:
                ray.get([h.terminate_all.remote("control plane stopped") for h in handles], timeout=120)
            time.sleep(1.0)  # let the inventory flush the terminated states
        with_suppress_kill(INVENTORY)
        try:
            if self._ray_started_here:
                serve.shutdown()
            else:  # a shared cluster: remove only our application
                from serve_app.app import APP_NAME

                serve.delete(APP_NAME)
        except Exception:
            log.exception("serve shutdown")
        for name in ray.util.list_named_actors(all_namespaces=True):
            if isinstance(name, dict) and name.get("namespace") == NAMESPACE:
                with_suppress_kill(name["name"])


def _exists(name: str) -> bool:
    import ray

    try:
        ray.get_actor(name, namespace=NAMESPACE)
        return True
    except ValueError:
        return False


def with_suppress_kill(name: str) -> None:
    import ray

    try:
        ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
    except Exception:
        pass
