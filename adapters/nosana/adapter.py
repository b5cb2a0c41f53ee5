"""NosanaAdapter: nodes are Nosana jobs, posted and watched by the sidecar (sidecar/README.md).

The sidecar owns the wallet, IPFS and Solana; this adapter only builds the job definition and talks
to the sidecar's HTTP API. Readiness, the public URL and redeploys arrive by the sidecar's heartbeats.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
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
    TemporaryProviderError,
)
from adapters.nosana.client import NotFound, SidecarClient
from adapters.nosana.jobdef import build_job_definition

DEFAULT_SIDECAR_URL = "http://localhost:3000"
DEFAULT_TIMEOUT_S = 3600
DEFAULT_SERVICE_DOMAIN = "node.k8s.prd.nos.ci"  # jobs are served at https://<hash>.node.k8s.prd.nos.ci
_BASE58 = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{32,44}$")

_STATUS: dict[str, ProviderNodeStatus] = {
    "posting": ProviderNodeStatus.PENDING,
    "queued": ProviderNodeStatus.PENDING,
    "redeploying": ProviderNodeStatus.PENDING,
    "running": ProviderNodeStatus.RUNNING,
    "stopping": ProviderNodeStatus.TERMINATED,
    "stopped": ProviderNodeStatus.TERMINATED,
    "failed": ProviderNodeStatus.FAILED,
    "insufficient_funds": ProviderNodeStatus.FAILED,
}


def _positive(config: dict[str, Any], key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{key} must be a positive number")
    return float(value)


class NosanaAdapter(ProviderAdapter):
    name = "nosana"
    capabilities = Capabilities(
        ephemeral=True, needs_sidecar=True, container_native=True, gpus=True, endpoint_moves=True
    )

    @classmethod
    def accepts_endpoint(cls, url: str) -> bool:
        """A redeployed job's URL: https on Nosana's service domain (NOSANA_SERVICE_DOMAIN, the sidecar's
        NOSANA_SERVICE_URL_TEMPLATE); other hosts only through INFERIA_TRUSTED_ENDPOINT_HOSTS."""
        domain = os.environ.get("NOSANA_SERVICE_DOMAIN", DEFAULT_SERVICE_DOMAIN).lower().strip(".")
        m = re.match(r"^https://([a-z0-9-]+)\.([a-z0-9.-]+?)(:\d+)?(/.*)?$", url.lower())
        return m is not None and m.group(2) == domain

    def __init__(self, pool_id: str, config: dict[str, Any] | None = None, data_dir: str | None = None) -> None:
        super().__init__(pool_id, config, data_dir)
        self.config = self.validate_config(self.config)
        key = self.config.get("internal_api_key") or os.environ.get("NOSANA_INTERNAL_API_KEY") or ""
        self._key = str(key)
        self._client: SidecarClient | None = None

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        out = dict(config or {})
        url: Any = out.get("sidecar_url") or os.environ.get("NOSANA_SIDECAR_URL") or DEFAULT_SIDECAR_URL
        if not isinstance(url, str) or not re.match(r"^https?://[^\s]+$", url):
            raise ValueError("sidecar_url must be an http(s) URL")
        out["sidecar_url"] = url.rstrip("/")
        market = out.get("market")
        if not isinstance(market, str) or not _BASE58.match(market):
            raise ValueError("market is required: the address (base58) of the Nosana GPU market to post jobs to")
        timeout_s = out.get("timeout_s", DEFAULT_TIMEOUT_S)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int) or not 60 <= timeout_s <= 30 * 24 * 3600:
            raise ValueError("timeout_s must be an integer number of seconds between 60 and 2592000")
        out["timeout_s"] = timeout_s
        for key, default in (("request_timeout_s", 10.0), ("launch_timeout_s", 60.0)):
            out[key] = _positive(out, key, default)
        retries = out.get("retries", 2)
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
            raise ValueError("retries must be an integer between 0 and 10")
        out["retries"] = retries
        images = out.get("images", {})
        if not isinstance(images, dict) or not all(isinstance(v, str) and v for v in images.values()):
            raise ValueError("images must map an engine name to a container image")
        vram = out.get("required_vram_gb")
        if vram is not None and (isinstance(vram, bool) or not isinstance(vram, int) or vram <= 0):
            raise ValueError("required_vram_gb must be a positive integer")
        api_key = out.get("internal_api_key")
        if api_key is not None and (not isinstance(api_key, str) or len(api_key) < 16):
            raise ValueError("internal_api_key must be a string of 16 characters or more")
        return out

    # ------------------------------------------------------------------ plumbing
    @property
    def client(self) -> SidecarClient:
        if self._client is None:
            if not self._key:
                raise PermanentProviderError(
                    "no key for the Nosana sidecar: set NOSANA_INTERNAL_API_KEY or the pool's internal_api_key"
                )
            self._client = SidecarClient(
                self.config["sidecar_url"],
                self._key,
                timeout_s=self.config["request_timeout_s"],
                launch_timeout_s=self.config["launch_timeout_s"],
                retries=self.config["retries"],
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _to_node(self, job: dict[str, Any]) -> ProvisionedNode:
        return ProvisionedNode(
            node_id=str(job["node_id"]),
            pool_id=str(job.get("pool_id") or self.pool_id),
            provider_instance_id=str(job.get("job_id") or f"pending-{job['node_id']}"),
            endpoint=job.get("url") if job.get("state") == "running" and job.get("ready") else None,
            ip_address=None,
            gpu_count=1,
            price_per_hour=float(job.get("price") or 0) * 3600 / 1e6,
            resources={
                "market": job.get("market"),
                "ipfs_hash": job.get("ipfs_hash"),
                "nosana_state": job.get("state"),
                "nosana_host": job.get("node_host"),
                "job_ids": job.get("job_ids") or [],
            },
        )

    # ------------------------------------------------------------------ resources
    async def discover_resources(self) -> list[ResourceOffer]:
        try:
            body = await self.client.request("GET", "/markets")
        except NotFound as exc:
            raise PermanentProviderError("the Nosana sidecar has no /markets route (wrong sidecar_url?)") from exc
        offers = []
        for m in body.get("markets") or []:
            if not isinstance(m, dict) or m.get("error"):
                continue
            offers.append(
                ResourceOffer(
                    provider="nosana",
                    region=str(m.get("name") or m.get("address")),
                    gpu_type=m.get("gpu_type"),
                    gpu_count=int(m.get("gpu_count") or 1),
                    gpu_memory_mb=int(m.get("gpu_memory_mb") or 0),
                    price_per_hour=float(m.get("price_per_hour") or 0),
                    available=int(m.get("available_nodes") or 0),
                    extra={
                        "market": m.get("address"),
                        "queue_type": m.get("queue_type"),
                        "queued_jobs": m.get("queued_jobs"),
                    },
                )
            )
        return offers

    # ------------------------------------------------------------------ provision
    async def provision_node(self, req: ProvisionRequest) -> ProvisionedNode:
        if req.workload is None:
            raise PermanentProviderError("nosana nodes are jobs: an idle node without a workload cannot be provisioned")
        config = {**self.config, **{k: v for k, v in req.config.items() if k in ("market", "timeout_s")}}
        try:
            built = build_job_definition(
                req.workload,
                images=self.config.get("images") or {},
                required_vram_gb=self.config.get("required_vram_gb"),
                forbidden=[self._key, os.environ.get("INFERIA_API_TOKEN", ""), req.node_token],
            )
        except ValueError as exc:
            raise PermanentProviderError(str(exc)) from exc
        body = {
            "node_id": req.node_id,
            "pool_id": req.pool_id,
            "job_definition": built.definition,
            "market": config["market"],
            "timeout_s": int(config["timeout_s"]),
            "health_path": built.health_path,
            "heartbeat": {
                "url": req.heartbeat_url.split(",")[0],  # the sidecar posts to one URL
                "token": req.node_token,
                "interval_s": req.heartbeat_interval_s,
            },
        }
        try:
            launched = await self.client.request(
                "POST", "/jobs/launch", json=body, timeout_s=self.config["launch_timeout_s"]
            )
            job = await self.client.request("GET", f"/jobs/{req.node_id}")
        except NotFound as exc:
            raise TemporaryProviderError(f"the sidecar lost node {req.node_id} right after launching it") from exc
        if not launched.get("job_id"):
            raise TemporaryProviderError(f"the job of node {req.node_id} is not posted yet ({launched.get('state')})")
        node = self._to_node(job)
        extra = {"served_model": built.served_model, "engine": req.workload.engine, "port": built.port}
        return replace(node, deployment_id=req.workload.deployment_id, resources={**node.resources, **extra})

    # ------------------------------------------------------------------ deprovision
    async def deprovision_node(self, node: NodeRef) -> None:
        try:
            body = await self.client.request("POST", f"/jobs/{node.node_id}/stop")
        except NotFound:
            return  # never launched, or already forgotten: gone
        if body.get("state") != "stopped":
            raise TemporaryProviderError(f"the job of node {node.node_id} is {body.get('state')}; the stop is retried")

    # ------------------------------------------------------------------ status
    async def get_node_status(self, node: NodeRef) -> NodeStatus:
        try:
            job = await self.client.request("GET", f"/jobs/{node.node_id}")
        except NotFound:
            return NodeStatus(ProviderNodeStatus.TERMINATED, "not known to the Nosana sidecar")
        except (TemporaryProviderError, PermanentProviderError) as exc:
            return NodeStatus(ProviderNodeStatus.UNKNOWN, str(exc))
        state = str(job.get("state"))
        reason = job.get("last_error") or job.get("last_end")
        return NodeStatus(
            _STATUS.get(state, ProviderNodeStatus.UNKNOWN), f"nosana job {state}" + (f": {reason}" if reason else "")
        )

    async def list_nodes(self, pool_id: str) -> list[ProvisionedNode]:
        body = await self.client.request("GET", "/jobs", params={"pool_id": pool_id, "active": "1"})
        return [self._to_node(j) for j in body.get("jobs") or [] if isinstance(j, dict) and j.get("node_id")]

    # ------------------------------------------------------------------ logs
    async def get_logs(self, node: NodeRef, tail: int = 100) -> list[str]:
        try:
            body = await self.client.request("GET", f"/jobs/{node.node_id}/logs", params={"tail": tail})
        except NotFound:
            return []
        return [str(line) for line in body.get("lines") or []]
