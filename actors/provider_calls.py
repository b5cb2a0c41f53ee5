"""Counts of provider calls and their errors, per provider and call, in this process (a pool actor).

`count_calls(adapter)` wraps the adapter's provider methods on the instance (the adapter keeps its type); the
API's /metrics reads the totals of every pool actor through `PoolActor.provider_calls()`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from adapters.base import ProviderAdapter

CALLS = (
    "provision_node",
    "deprovision_node",
    "get_node_status",
    "list_nodes",
    "get_logs",
    "discover_resources",
)

# (provider, call) -> [calls, errors]; one small table per process, bounded by providers x CALLS
_TOTALS: dict[tuple[str, str], list[int]] = {}


def _counted(provider: str, call: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        slot = _TOTALS.setdefault((provider, call), [0, 0])
        slot[0] += 1
        try:
            return await fn(*args, **kwargs)
        except Exception:
            slot[1] += 1
            raise

    return wrapper


def count_calls(adapter: ProviderAdapter, provider: str) -> ProviderAdapter:
    """Count every provider call of this adapter instance (idempotent: wrapping twice counts once)."""
    if getattr(adapter, "_inferia_counted", False):
        return adapter
    for call in CALLS:
        fn = getattr(adapter, call, None)
        if fn is not None:
            setattr(adapter, call, _counted(provider, call, fn))
    adapter._inferia_counted = True  # type: ignore[attr-defined]
    return adapter


def totals() -> list[dict[str, Any]]:
    """[{"provider", "call", "calls", "errors"}] since this process started."""
    return [{"provider": p, "call": c, "calls": n, "errors": e} for (p, c), (n, e) in sorted(_TOTALS.items())]
