"""Adapter registry: the built-ins plus whatever the `inferia.adapters` entry-point group provides."""

from __future__ import annotations

import importlib
import logging
import os
from importlib.metadata import entry_points
from typing import Any

from adapters.base import PermanentProviderError, ProviderAdapter

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "inferia.adapters"
# extra adapters without packaging: "name=module:Class,other=module:Class" (read by every process, Ray
# workers included, so set it before the control plane starts)
ENV_ADAPTERS = "INFERIA_ADAPTERS"
# name -> "module:Class"; imported lazily so optional dependencies stay optional
BUILTINS: dict[str, str] = {
    "local": "adapters.local.adapter:LocalAdapter",
    "kubernetes": "adapters.kubernetes.adapter:KubernetesAdapter",
    "skypilot": "adapters.skypilot.adapter:SkyPilotAdapter",
    "nosana": "adapters.nosana.adapter:NosanaAdapter",
}

_extra: dict[str, type[ProviderAdapter]] = {}


def register(cls: type[ProviderAdapter]) -> type[ProviderAdapter]:
    """Register an adapter class at run time (tests, plugins loaded by hand)."""
    _extra[cls.name] = cls
    return cls


def _entry_points() -> dict[str, str]:
    found: dict[str, str] = {}
    try:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            found[ep.name] = ep.value
    except Exception:  # a broken plugin must not break the registry
        log.exception("could not read the %s entry points", ENTRY_POINT_GROUP)
    return found


def _env_adapters() -> dict[str, str]:
    found: dict[str, str] = {}
    for item in os.environ.get(ENV_ADAPTERS, "").split(","):
        name, sep, target = item.strip().partition("=")
        if sep and name.strip() and ":" in target:
            found[name.strip()] = target.strip()
        elif item.strip():
            log.warning("ignoring %s entry %r: expected name=module:Class", ENV_ADAPTERS, item.strip())
    return found


def available() -> list[str]:
    return sorted(set(BUILTINS) | set(_entry_points()) | set(_env_adapters()) | set(_extra))


def get_adapter_class(name: str) -> type[ProviderAdapter]:
    if name in _extra:
        return _extra[name]
    target = BUILTINS.get(name) or _env_adapters().get(name) or _entry_points().get(name)
    if target is None:
        raise PermanentProviderError(f"unknown provider {name!r}; available: {', '.join(available())}")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PermanentProviderError(
            f"provider {name!r} is not installed ({exc.name} missing); "
            f"install the extra: pip install 'inferia-orchestration[{name}]'"
        ) from exc
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, ProviderAdapter)):
        raise PermanentProviderError(f"{target} is not a ProviderAdapter")
    return cls


def create_adapter(
    name: str, pool_id: str, config: dict[str, Any] | None = None, data_dir: str | None = None
) -> ProviderAdapter:
    return get_adapter_class(name)(pool_id, config or {}, data_dir)
