"""The SkyPilot pool config: validation with the offending key named, and a typed view of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_PORT_RANGE = (8000, 8000)
DEFAULT_CACHE_S = 600.0
DEFAULT_LAUNCH_TIMEOUT_S = 1800.0
CLUSTER_PREFIX = "inferia-"


@dataclass(frozen=True)
class Infra:
    """One candidate location: a cloud, optionally narrowed to a region and a zone."""

    cloud: str
    region: str | None = None
    zone: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.cloud, self.region, self.zone) if p)


@dataclass(frozen=True)
class SkyPilotConfig:
    infra: tuple[Infra, ...]  # empty: any enabled cloud
    accelerators: tuple[str, ...]  # candidate GPU names; empty: CPU-only nodes
    accelerator_count: int
    use_spot: bool
    spot_fallback_on_demand: bool
    disk_size_gb: int | None
    max_cost_per_hour: float | None
    api_server: str | None
    port_range: tuple[int, int]
    cluster_prefix: str
    idle_minutes_to_autostop: int | None
    discover_cache_s: float
    launch_timeout_s: float


def _int(out: dict[str, Any], key: str, default: int | None, minimum: int) -> int | None:
    value = out.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}")
    return value


def _float(out: dict[str, Any], key: str, default: float | None, positive: bool = True) -> float | None:
    value = out.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or (positive and value <= 0):
        raise ValueError(f"{key} must be a positive number")
    return float(value)


def _bool(out: dict[str, Any], key: str, default: bool) -> bool:
    value = out.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false")
    return value


def _infra(value: Any) -> list[str]:
    """Normalise `infra`: "any" / None / [] -> []; a string or a list of "cloud[/region[/zone]]"."""
    if value is None or value == "any" or value == []:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
        raise ValueError('infra must be "any" or a list of "cloud[/region[/zone]]" strings')
    out = []
    for item in items:
        parts = [p.strip() for p in item.strip().split("/")]
        if len(parts) > 3 or not all(parts):
            raise ValueError(f'infra entry {item!r} must look like "cloud", "cloud/region" or "cloud/region/zone"')
        out.append("/".join(parts))
    return out


def _accelerators(value: Any) -> list[str]:
    if value is None or value == []:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() and ":" not in i for i in items):
        raise ValueError(
            'accelerators must be a GPU name or a list of them (e.g. ["H100", "A100"]); '
            "set the count with accelerator_count"
        )
    return [i.strip() for i in items]


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Check and normalise a pool's provider_config; ValueError names the bad key."""
    out = dict(config or {})
    out["infra"] = _infra(out.get("infra"))
    out["accelerators"] = _accelerators(out.get("accelerators"))
    out["accelerator_count"] = _int(out, "accelerator_count", 1, 1)
    out["use_spot"] = _bool(out, "use_spot", False)
    out["spot_fallback_on_demand"] = _bool(out, "spot_fallback_on_demand", False)
    out["disk_size_gb"] = _int(out, "disk_size_gb", None, 10)
    out["max_cost_per_hour"] = _float(out, "max_cost_per_hour", None)
    out["idle_minutes_to_autostop"] = _int(out, "idle_minutes_to_autostop", None, 1)
    out["discover_cache_s"] = _float(out, "discover_cache_s", DEFAULT_CACHE_S, positive=False)
    out["launch_timeout_s"] = _float(out, "launch_timeout_s", DEFAULT_LAUNCH_TIMEOUT_S)
    if out["discover_cache_s"] < 0:
        raise ValueError("discover_cache_s must be >= 0")
    api_server = out.get("api_server")
    if api_server is not None and (
        not isinstance(api_server, str) or not api_server.startswith(("http://", "https://"))
    ):
        raise ValueError("api_server must be an http(s):// URL of a SkyPilot API server")
    out["api_server"] = api_server.rstrip("/") if api_server else None
    port_range = out.get("port_range", list(DEFAULT_PORT_RANGE))
    if (
        not isinstance(port_range, list | tuple)
        or len(port_range) != 2
        or not all(isinstance(p, int) and not isinstance(p, bool) for p in port_range)
        or not 1024 <= port_range[0] <= port_range[1] <= 65535
    ):
        raise ValueError("port_range must be [min, max] with 1024 <= min <= max <= 65535")
    out["port_range"] = [int(port_range[0]), int(port_range[1])]
    prefix = out.get("cluster_prefix", CLUSTER_PREFIX)
    if (
        not isinstance(prefix, str)
        or not prefix
        or not prefix[0].isalpha()
        or len(prefix) > 16
        or not all(c.isalnum() or c == "-" for c in prefix)
    ):
        raise ValueError("cluster_prefix must start with a letter and hold at most 16 letters, digits or '-'")
    out["cluster_prefix"] = prefix.lower()
    return out


def parse(config: dict[str, Any]) -> SkyPilotConfig:
    c = validate(config)
    infra = []
    for item in c["infra"]:
        parts = item.split("/")
        infra.append(Infra(parts[0].lower(), *[*parts[1:], None, None][:2]))
    return SkyPilotConfig(
        infra=tuple(infra),
        accelerators=tuple(c["accelerators"]),
        accelerator_count=c["accelerator_count"],
        use_spot=c["use_spot"],
        spot_fallback_on_demand=c["spot_fallback_on_demand"],
        disk_size_gb=c["disk_size_gb"],
        max_cost_per_hour=c["max_cost_per_hour"],
        api_server=c["api_server"],
        port_range=(c["port_range"][0], c["port_range"][1]),
        cluster_prefix=c["cluster_prefix"],
        idle_minutes_to_autostop=c["idle_minutes_to_autostop"],
        discover_cache_s=c["discover_cache_s"],
        launch_timeout_s=c["launch_timeout_s"],
    )
