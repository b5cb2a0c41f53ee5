"""A pool's ceilings on new nodes beyond `max_nodes`: `max_cost_per_hour` and `allowed_gpu_types`.

The price of a node is known only once its provider placed it, so a new node is counted at the price of
the cheapest offer it could get (the adapter's `discover_resources`, cached), and a node that is still
provisioning at that estimate too. A refusal is a `str` that starts with "capped by pool": the deployment
keeps it as its error and retries (it does not fail), and the pool records an event.

`allowed_gpu_types` (empty: any): a workload that needs GPUs only gets a node when the provider offers an
allowed type with enough GPUs; when the provider offers none, the create is refused with the reason.
A provider whose offers cannot be read right now is not a refusal ("unknown is not no").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from actors.records import PoolRecord
from adapters.base import ResourceOffer

COST_CEILING = "cost ceiling"
GPU_TYPES = "allowed GPU types"


@dataclass(frozen=True)
class Capped:
    pool: str
    what: str  # COST_CEILING | GPU_TYPES
    detail: str

    def __str__(self) -> str:
        return f"capped by pool {self.pool!r}: {self.what} ({self.detail})"


def _allowed(pool: PoolRecord, offer: ResourceOffer) -> bool:
    if not pool.allowed_gpu_types or offer.gpu_count == 0:
        return True
    wanted = {t.lower() for t in pool.allowed_gpu_types}
    return (offer.gpu_type or "").lower() in wanted


def fitting_offers(pool: PoolRecord, offers: Iterable[ResourceOffer], gpus: int) -> list[ResourceOffer]:
    """Offers a node of this pool may be placed on for a workload of `gpus` GPUs."""
    out = []
    for o in offers:
        if o.available <= 0 or o.gpu_count < gpus:
            continue
        if gpus > 0 and not _allowed(pool, o):
            continue
        out.append(o)
    return out


def estimate_price(pool: PoolRecord, offers: list[ResourceOffer] | None, gpus: int) -> float | None:
    """The cheapest price per hour a new node could get; None when the offers are unknown or none fits."""
    if offers is None:
        return None
    fit = fitting_offers(pool, offers, gpus)
    return min((o.price_per_hour for o in fit), default=None)


def check_new_node(
    pool: PoolRecord, running_cost: float, offers: list[ResourceOffer] | None, gpus: int
) -> tuple[Capped | None, float]:
    """May one more node be created? Returns (refusal or None, the price it is counted at)."""
    if gpus > 0 and pool.allowed_gpu_types and offers is not None and not fitting_offers(pool, offers, gpus):
        types = ", ".join(pool.allowed_gpu_types)
        return Capped(pool.name, GPU_TYPES, f"no offer of {types} with {gpus} GPU(s)"), 0.0
    price = estimate_price(pool, offers, gpus) or 0.0
    ceiling = pool.max_cost_per_hour
    if ceiling is not None and running_cost + price > ceiling + 1e-9:
        detail = f"{running_cost:.4f}/h running + {price:.4f}/h for one more node > {ceiling:.4f}/h"
        return Capped(pool.name, COST_CEILING, detail), price
    return None, price
