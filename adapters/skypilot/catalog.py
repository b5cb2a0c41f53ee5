"""Offers from SkyPilot's catalog: GPU instances with on-demand and spot prices per cloud and region."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adapters.base import ResourceOffer
from adapters.skypilot.config import SkyPilotConfig

PROVIDER = "skypilot"


@dataclass(frozen=True)
class Offer:
    cloud: str
    region: str
    instance_type: str
    accelerator: str | None
    accelerator_count: int
    vcpu: float
    memory_gb: float
    gpu_memory_gb: float
    price: float
    spot_price: float | None  # None: no spot market there

    def price_for(self, spot: bool) -> float | None:
        return self.spot_price if spot else self.price

    def to_resource_offer(self, spot: bool) -> ResourceOffer:
        return ResourceOffer(
            provider=PROVIDER,
            region=f"{self.cloud}/{self.region}",
            gpu_type=self.accelerator,
            gpu_count=self.accelerator_count,
            gpu_memory_mb=int(self.gpu_memory_gb * 1024),
            vcpu=int(self.vcpu),
            ram_mb=int(self.memory_gb * 1024),
            price_per_hour=float(self.price_for(spot) or 0.0),
            spot=spot,
            extra={
                "cloud": self.cloud,
                "instance_type": self.instance_type,
                "on_demand_price": self.price,
                "spot_price": self.spot_price,
            },
        )


def _num(value: Any) -> float | None:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def list_offers(cfg: SkyPilotConfig, clouds: list[str]) -> list[Offer]:
    """Every catalog row matching the pool's clouds, regions, accelerators and count (sync: reads CSVs)."""
    from sky import catalog

    wanted_regions = {(i.cloud, i.region) for i in cfg.infra if i.region}
    found = catalog.list_accelerators(
        gpus_only=True,
        quantity_filter=cfg.accelerator_count,
        clouds=clouds,
        all_regions=True,
        require_price=True,
    )
    names = {a.lower() for a in cfg.accelerators}
    offers: list[Offer] = []
    for name, infos in found.items():
        if names and name.lower() not in names:
            continue
        for info in infos:
            cloud = str(info.cloud).lower()
            region = str(info.region)
            if (
                wanted_regions
                and not any(c == cloud and r == region for c, r in wanted_regions)
                and any(c == cloud for c, _ in wanted_regions)
            ):
                continue  # this cloud is narrowed to other regions
            price = _num(info.price)
            if price is None or not info.instance_type:
                continue
            offers.append(
                Offer(
                    cloud=cloud,
                    region=region,
                    instance_type=str(info.instance_type),
                    accelerator=name,
                    accelerator_count=int(info.accelerator_count),
                    vcpu=_num(info.cpu_count) or 0.0,
                    memory_gb=_num(info.memory) or 0.0,
                    gpu_memory_gb=_num(info.device_memory) or 0.0,
                    price=price,
                    spot_price=_num(info.spot_price),
                )
            )
    offers.sort(key=lambda o: (o.price, o.cloud, o.region, o.instance_type))
    return offers


class OfferCache:
    """`list_offers` results kept for `ttl_s` seconds per set of clouds."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: dict[tuple[str, ...], tuple[float, list[Offer]]] = {}

    def get(self, key: tuple[str, ...]) -> list[Offer] | None:
        hit = self._entries.get(key)
        if hit is None or self.clock() - hit[0] > self.ttl_s:
            return None
        return hit[1]

    def put(self, key: tuple[str, ...], offers: list[Offer]) -> None:
        self._entries[key] = (self.clock(), offers)
