"""SkyPilotAdapter: one SkyPilot cluster per node; launch (provision + setup), then exec the node agent."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from adapters.base import (
    Capabilities,
    NodeRef,
    NodeStatus,
    PermanentProviderError,
    ProviderAdapter,
    ProviderNodeStatus,
    ProvisionedNode,
    ProvisionRequest,
    ResourceOffer,
)
from adapters.skypilot import config as config_mod
from adapters.skypilot.catalog import Offer, OfferCache, list_offers
from adapters.skypilot.client import Client, ClusterRecord, load_client
from adapters.skypilot.errors import SKY_CHECK_HINT, CapacityError, is_gone, translate
from adapters.skypilot.placement import (
    Placement,
    candidates,
    ceiling_refusal,
    make_dag,
    to_placement,
)
from adapters.skypilot.task import build_engine, build_task, cluster_name, node_id_of, pick_port, pool_prefix

log = logging.getLogger(__name__)

MAX_FAILOVERS = 8  # candidates tried after capacity errors within one provision call
EXEC_TIMEOUT_S = 300.0
SHORT_TIMEOUT_S = 60.0


class SkyPilotAdapter(ProviderAdapter):
    name = "skypilot"
    capabilities = Capabilities(ephemeral=True, spot=True, gpus=True)

    def __init__(
        self,
        pool_id: str,
        config: dict[str, Any] | None = None,
        data_dir: str | None = None,
        client: Client | None = None,
    ) -> None:
        super().__init__(pool_id, config, data_dir)
        self.config = config_mod.validate(self.config)
        self.cfg = config_mod.parse(self.config)
        self.client: Client = client or load_client(self.cfg.api_server, data_dir)
        self._offers = OfferCache(self.cfg.discover_cache_s)
        self._locks: dict[str, asyncio.Lock] = {}
        self._placements: dict[str, Placement] = {}
        self._provisioning: set[str] = set()
        self._endpoints: dict[str, str] = {}  # cluster name -> engine endpoint (asked once per cluster)

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        return config_mod.validate(config)

    def _name(self, node_id: str) -> str:
        return cluster_name(self.cfg.cluster_prefix, self.pool_id, node_id)

    def _name_of(self, node: NodeRef) -> str:
        """The cluster of a node: the name recorded at provisioning when it is one of ours (clusters
        named before the pool tag was part of the name keep working), else the name from the id."""
        recorded = node.provider_instance_id
        if recorded and recorded.startswith(self.cfg.cluster_prefix):
            return recorded
        return self._name(node.node_id)

    # ------------------------------------------------------------------ catalog
    async def _clouds(self) -> list[str]:
        if self.cfg.infra:
            return list(dict.fromkeys(i.cloud for i in self.cfg.infra))
        try:
            clouds = await self.client.enabled_clouds()
        except Exception as exc:
            raise translate(exc, "listing enabled clouds") from exc
        if not clouds:
            raise PermanentProviderError(f"no cloud is enabled in SkyPilot ({SKY_CHECK_HINT})")
        return clouds

    async def offers(self) -> list[Offer]:
        clouds = tuple(sorted(await self._clouds()))
        cached = self._offers.get(clouds)
        if cached is not None:
            return cached
        try:
            found = await asyncio.to_thread(list_offers, self.cfg, list(clouds))
        except Exception as exc:
            raise translate(exc, "reading SkyPilot's catalog") from exc
        self._offers.put(clouds, found)
        return found

    async def discover_resources(self) -> list[ResourceOffer]:
        out: list[ResourceOffer] = []
        ceiling = self.cfg.max_cost_per_hour
        for offer in await self.offers():
            for spot in (False, True):
                price = offer.price_for(spot)
                if price is None or (ceiling is not None and price > ceiling):
                    continue
                out.append(offer.to_resource_offer(spot))
        return out

    # ------------------------------------------------------------------ placement
    def _markets(self) -> list[bool]:
        if self.cfg.use_spot:
            return [True, False] if self.cfg.spot_fallback_on_demand else [True]
        return [False]

    async def place(self, port: int, blocked: set[tuple[str, str, str, bool]] | None = None) -> Placement:
        """The cheapest feasible resources under the pool's constraints (SkyPilot's optimizer decides)."""
        offers = await self.offers()
        blocked = blocked or set()
        infeasible: str | None = None
        for spot in self._markets():
            cands = candidates(self.cfg, offers, spot, port, blocked)
            if not cands:
                continue
            try:
                best = await self.client.optimize(make_dag(cands))
            except Exception as exc:
                err = translate(exc, "placing the node")
                if isinstance(err, CapacityError):
                    infeasible = str(err)
                    continue  # nothing feasible in this market: try the next one
                raise err from exc
            return to_placement(best, offers)
        if infeasible and not blocked:
            raise PermanentProviderError(f"no feasible resources under the pool's constraints: {infeasible}")
        if blocked:
            raise CapacityError(f"no capacity left among {len(blocked)} candidate(s) tried; retrying later")
        if self.cfg.max_cost_per_hour is not None and offers:
            raise ceiling_refusal(self.cfg, offers, self._markets()[0])
        what = f"{self.cfg.accelerator_count}x {'/'.join(self.cfg.accelerators) or 'GPU'}"
        raise PermanentProviderError(f"no offer for {what} in {self._infra_text()} in SkyPilot's catalog")

    def _infra_text(self) -> str:
        return ", ".join(str(i) for i in self.cfg.infra) or "any enabled cloud"

    def _placement_of(self, rec: ClusterRecord, port: int, offers: list[Offer]) -> Placement | None:
        """The placement of an existing cluster (a retried or adopted provision reuses it)."""
        import sky

        if not (rec.cloud and rec.region and rec.instance_type):
            return None
        offer = next(
            (o for o in offers if (o.cloud, o.region, o.instance_type) == (rec.cloud, rec.region, rec.instance_type)),
            None,
        )
        res = sky.Resources(
            infra="/".join(p for p in (rec.cloud, rec.region, rec.zone) if p),
            instance_type=rec.instance_type,
            accelerators={offer.accelerator: offer.accelerator_count} if offer and offer.accelerator else None,
            use_spot=rec.use_spot,
            ports=[str(port)],
            disk_size=self.cfg.disk_size_gb,
        )
        return to_placement(res, offers)

    # ------------------------------------------------------------------ provision
    async def provision_node(self, req: ProvisionRequest) -> ProvisionedNode:
        lock = self._locks.setdefault(req.node_id, asyncio.Lock())
        async with lock:
            self._provisioning.add(req.node_id)
            try:
                return await self._provision(req)
            finally:
                self._provisioning.discard(req.node_id)

    async def _find(self, name: str) -> ClusterRecord | None:
        try:
            found = await self.client.status([name], refresh=False)
        except Exception as exc:
            if is_gone(exc):
                return None
            raise translate(exc, f"reading the status of {name}") from exc
        return next((r for r in found if r.name == name), None)

    async def _provision(self, req: ProvisionRequest) -> ProvisionedNode:
        name = self._name(req.node_id)
        port = pick_port(req.node_id, self.cfg.port_range, req.workload)
        engine = build_engine(req.workload, port) if req.workload is not None else None
        placement = self._placements.get(req.node_id)
        existing = await self._find(name)
        if existing is not None and existing.status == "STOPPED":
            await self._down(name)  # a preempted/stopped leftover under our name: start clean
            existing, placement = None, None
        if placement is None and existing is not None:
            placement = self._placement_of(existing, port, await self.offers())
        blocked: set[tuple[str, str, str, bool]] = set()
        for _ in range(MAX_FAILOVERS):
            if placement is None:
                placement = await self.place(port, blocked)
            task = build_task(req, placement.resources, None, engine, run=False)
            try:
                rid = await self.client.launch(task, name, idle_minutes_to_autostop=self.cfg.idle_minutes_to_autostop)
                log.info("node %s: launching %s on %s (request %s)", req.node_id, name, placement.describe(), rid)
                await self.client.get(rid, self.cfg.launch_timeout_s)
            except Exception as exc:
                err = translate(exc, f"launching {name} on {placement.cloud}/{placement.region}")
                if isinstance(err, CapacityError) and existing is None:
                    log.warning("node %s: %s; failing over to the next candidate", req.node_id, err)
                    blocked.add(placement.key())
                    placement = None
                    await self._down_quietly(name)
                    continue
                raise err from exc
            break
        else:
            raise CapacityError(f"no capacity for {name} after {MAX_FAILOVERS} candidates; retrying later")
        self._placements[req.node_id] = placement
        endpoint = None
        try:
            if engine is not None:
                endpoint = await self.client.endpoint(name, port)
                if not endpoint:
                    raise TemporaryProviderErrorNoEndpoint(f"{name} has no endpoint for port {port} yet")
            run = build_task(req, placement.resources, endpoint, engine, run=True)
            rid = await self.client.exec(run, name)
            await self.client.get(rid, EXEC_TIMEOUT_S)
        except Exception as exc:
            raise translate(exc, f"starting the node agent on {name}") from exc
        rec = await self._find(name)
        if endpoint:
            self._endpoints[name] = endpoint
        return self._to_node(req.node_id, name, placement, rec, endpoint, port, engine_info(req, engine))

    def _to_node(
        self,
        node_id: str,
        name: str,
        placement: Placement | None,
        rec: ClusterRecord | None,
        endpoint: str | None,
        port: int | None,
        extra: dict[str, Any],
    ) -> ProvisionedNode:
        offer_key = (placement.cloud, placement.region, placement.instance_type) if placement else None
        offer = None
        cached = self._offers._entries.values()
        for _, offers in cached:
            offer = next((o for o in offers if (o.cloud, o.region, o.instance_type) == offer_key), None)
            if offer:
                break
        resources: dict[str, Any] = {"cluster_name": name, "port": port, **extra}
        if placement is not None:
            resources.update(placement.describe())
        return ProvisionedNode(
            node_id=node_id,
            pool_id=self.pool_id,
            provider_instance_id=name,
            endpoint=endpoint,
            ip_address=rec.head_ip if rec else None,
            gpu_type=placement.accelerator if placement else None,
            gpu_count=placement.accelerator_count if placement else 0,
            vcpu=int(offer.vcpu) if offer else 0,
            ram_mb=int(offer.memory_gb * 1024) if offer else 0,
            price_per_hour=placement.price_per_hour if placement else 0.0,
            deployment_id=extra.get("deployment_id"),
            resources=resources,
        )

    # ------------------------------------------------------------------ deprovision
    async def _down(self, name: str) -> None:
        try:
            rid = await self.client.down(name)
            await self.client.get(rid, self.cfg.launch_timeout_s)
        except Exception as exc:
            if is_gone(exc):
                return
            raise translate(exc, f"tearing down {name}") from exc

    async def _down_quietly(self, name: str) -> None:
        try:
            await self._down(name)
        except Exception as exc:  # a half-created cluster; the provider reconcile cleans it later
            log.warning("could not tear down %s after a failed launch: %s", name, exc)

    async def deprovision_node(self, node: NodeRef) -> None:
        name = self._name_of(node)
        await self._down(name)
        self._placements.pop(node.node_id, None)
        self._endpoints.pop(name, None)
        self._locks.pop(node.node_id, None)

    # ------------------------------------------------------------------ status
    async def get_node_status(self, node: NodeRef) -> NodeStatus:
        if node.node_id in self._provisioning:
            return NodeStatus(ProviderNodeStatus.PENDING, "launching")
        name = self._name_of(node)
        try:
            found = await self.client.status([name], refresh=True)
        except Exception as exc:
            if is_gone(exc):
                return NodeStatus(ProviderNodeStatus.TERMINATED, "cluster not found")
            return NodeStatus(ProviderNodeStatus.UNKNOWN, str(translate(exc, "sky status")))
        rec = next((r for r in found if r.name == name), None)
        return status_of(rec)

    async def list_nodes(self, pool_id: str) -> list[ProvisionedNode]:
        """Every cluster of this pool, whatever its state (INIT and STOPPED ones too: an orphan in any
        state is cleaned), with the facts SkyPilot's record and the catalog give after a restart."""
        try:
            found = await self.client.status(None, refresh=False)
        except Exception as exc:
            raise translate(exc, "listing clusters") from exc
        head = pool_prefix(self.cfg.cluster_prefix, pool_id)
        offers: list[Offer] | None = None
        out = []
        for rec in found:
            if not rec.name.startswith(head):
                continue  # another pool's cluster, or not ours at all
            node_id = node_id_of(self.cfg.cluster_prefix, pool_id, rec.name)
            if node_id is None:
                log.warning("cluster %s carries pool %s's prefix but no node id this pool makes", rec.name, pool_id)
                continue
            placement = self._placements.get(node_id)
            if placement is None:
                if offers is None:
                    offers = await self._offers_quietly()
                guess = pick_port(node_id, self.cfg.port_range, None)  # a model's own port is not known here
                placement = self._placement_of(rec, guess, offers) if offers else None
            port = int(placement.resources.ports[0]) if placement and placement.resources.ports else None
            endpoint = await self._listed_endpoint(rec, port)
            out.append(self._to_node(node_id, rec.name, placement, rec, endpoint, port, {"status": rec.status}))
        return out

    async def _offers_quietly(self) -> list[Offer]:
        try:
            return await self.offers()
        except Exception as exc:  # the list still counts; facts are filled in on a later list
            log.warning("pool %s: no catalog for the listed clusters' facts: %s", self.pool_id, exc)
            return []

    async def _listed_endpoint(self, rec: ClusterRecord, port: int | None) -> str | None:
        if rec.status != "UP" or port is None:
            return None
        known = self._endpoints.get(rec.name)
        if known is None:
            try:
                known = await self.client.endpoint(rec.name, port)
            except Exception as exc:
                log.warning("no endpoint for %s yet: %s", rec.name, exc)
                return None
            if known:
                self._endpoints[rec.name] = known
        return known

    # ------------------------------------------------------------------ logs
    async def get_logs(self, node: NodeRef, tail: int = 100) -> list[str]:
        name = self._name_of(node)
        try:
            return await self.client.tail_logs(name, tail)
        except Exception as exc:
            if is_gone(exc):
                return []
            raise translate(exc, f"tailing the logs of {name}") from exc

    async def close(self) -> None:
        await self.client.close()


class TemporaryProviderErrorNoEndpoint(ConnectionError):
    """The cluster is up but SkyPilot reports no endpoint for the port yet (translated as temporary)."""


def engine_info(req: ProvisionRequest, engine: Any) -> dict[str, Any]:
    if req.workload is None or engine is None:
        return {}
    return {
        "engine": req.workload.engine,
        "served_model": engine.served_model,
        "health_path": engine.health_path,
        "deployment_id": req.workload.deployment_id,
    }


def status_of(rec: ClusterRecord | None) -> NodeStatus:
    """Our node status for a `sky status` entry; a preempted spot cluster is terminated."""
    if rec is None:
        return NodeStatus(ProviderNodeStatus.TERMINATED, "cluster not found (torn down or preempted)")
    if rec.status == "UP":
        return NodeStatus(ProviderNodeStatus.RUNNING)
    if rec.status == "STOPPED":
        reason = "spot instance preempted" if rec.use_spot else "cluster stopped"
        return NodeStatus(ProviderNodeStatus.TERMINATED, reason)
    if rec.status == "INIT":
        if rec.use_spot and rec.reason:
            return NodeStatus(ProviderNodeStatus.TERMINATED, f"spot instance preempted: {rec.reason}")
        return NodeStatus(ProviderNodeStatus.PENDING, rec.reason or "launching")
    return NodeStatus(ProviderNodeStatus.UNKNOWN, f"unexpected cluster status {rec.status}")
