"""GPU discovery through NVML (the optional `nvidia-ml-py` package). No NVML, no GPUs."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

_lock = threading.Lock()
_cache: tuple[GpuInfo, ...] | None = None


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_mb: int


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _probe() -> tuple[GpuInfo, ...]:
    try:
        import pynvml
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, driver missing, ...: no GPU here
        log.debug("NVML unavailable: %s", exc)
        return ()
    try:
        found: list[GpuInfo] = []
        for index in range(int(pynvml.nvmlDeviceGetCount())):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = _text(pynvml.nvmlDeviceGetName(handle))
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            found.append(GpuInfo(index=index, name=name, memory_mb=int(memory.total) // (1024 * 1024)))
        return tuple(found)
    except Exception as exc:
        log.warning("NVML could not list the GPUs: %s", exc)
        return ()
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            log.debug("nvmlShutdown failed", exc_info=True)


def detect_gpus() -> list[GpuInfo]:
    """The GPUs of this machine (probed once, then cached); [] without NVML or a driver."""
    global _cache
    with _lock:
        if _cache is None:
            _cache = _probe()
        return list(_cache)


def reset_cache() -> None:
    """Forget the cached probe (tests)."""
    global _cache
    with _lock:
        _cache = None
