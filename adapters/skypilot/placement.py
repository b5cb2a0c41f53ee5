"""Placement: the cheapest feasible resources under the pool's constraints, chosen by SkyPilot's optimizer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapters.base import PermanentProviderError
from adapters.skypilot.catalog import Offer
from adapters.skypilot.config import SkyPilotConfig

if TYPE_CHECKING:
    import sky


class CostCeilingExceeded(PermanentProviderError):
    """Every feasible offer costs more per hour than the pool's max_cost_per_hour."""


@dataclass(frozen=True)
class Placement:
    resources: sky.Resources  # pinned: cloud, region, instance type, spot
    cloud: str
    region: str
    zone: str | None
    instance_type: str
    accelerator: str | None
    accelerator_count: int
    use_spot: bool
    price_per_hour: float

    def key(self) -> tuple[str, str, str, bool]:
        return (self.cloud, self.region, self.instance_type, self.use_spot)

    def describe(self) -> dict[str, Any]:
        return {
            "cloud": self.cloud,
            "region": self.region,
            "zone": self.zone,
            "instance_type": self.instance_type,
            "use_spot": self.use_spot,
            "price_per_hour": self.price_per_hour,
        }


def _zone(cfg: SkyPilotConfig, offer: Offer) -> str | None:
    for infra in cfg.infra:
        if infra.cloud == offer.cloud and infra.region == offer.region and infra.zone:
            return infra.zone
    return None


def candidates(
    cfg: SkyPilotConfig, offers: list[Offer], spot: bool, port: int, blocked: set[tuple[str, str, str, bool]]
) -> list[sky.Resources]:
    """One pinned sky.Resources per affordable, unblocked offer (spot or on-demand)."""
    import sky

    out: list[sky.Resources] = []
    for o in offers:
        price = o.price_for(spot)
        if price is None or (o.cloud, o.region, o.instance_type, spot) in blocked:
            continue
        if cfg.max_cost_per_hour is not None and price > cfg.max_cost_per_hour:
            continue
        out.append(
            sky.Resources(
                infra="/".join(p for p in (o.cloud, o.region, _zone(cfg, o)) if p),
                instance_type=o.instance_type,
                accelerators={o.accelerator: o.accelerator_count} if o.accelerator else None,
                use_spot=spot,
                ports=[str(port)],
                disk_size=cfg.disk_size_gb,
            )
        )
    return out


def cheapest(offers: list[Offer], spot: bool) -> float | None:
    prices = [p for o in offers if (p := o.price_for(spot)) is not None]
    return min(prices) if prices else None


def ceiling_refusal(cfg: SkyPilotConfig, offers: list[Offer], spot: bool) -> CostCeilingExceeded:
    low = cheapest(offers, spot)
    kind = "spot" if spot else "on-demand"
    what = f"{cfg.accelerator_count}x {'/'.join(cfg.accelerators) or 'CPU'}"
    if low is None:
        return CostCeilingExceeded(f"no {kind} offer for {what} in the pool's infra")
    return CostCeilingExceeded(
        f"cost ceiling: the cheapest {kind} {what} costs ${low:.2f}/h, above the pool's "
        f"max_cost_per_hour ${cfg.max_cost_per_hour:.2f}/h"
    )


def to_placement(best: sky.Resources, offers: list[Offer]) -> Placement:
    cloud = str(best.cloud).lower()
    region = str(best.region)
    offer = next(
        (o for o in offers if o.cloud == cloud and o.region == region and o.instance_type == best.instance_type),
        None,
    )
    price = float(best.get_cost(3600))
    accs = best.accelerators or {}
    acc, count = next(iter(accs.items()), (None, 0))
    return Placement(
        resources=best,
        cloud=cloud,
        region=region,
        zone=best.zone,
        instance_type=str(best.instance_type),
        accelerator=acc or (offer.accelerator if offer else None),
        accelerator_count=int(count),
        use_spot=bool(best.use_spot),
        price_per_hour=round(price, 6),
    )


def make_dag(resources: list[sky.Resources]) -> sky.Dag:
    import sky

    task = sky.Task(name="inferia-placement", run="true")
    task.set_resources(set(resources))
    with sky.Dag() as dag:
        dag.add(task)
    return dag
