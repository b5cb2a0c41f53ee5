"""The local provider: nodes are supervised process groups on this machine."""

from __future__ import annotations

from adapters.local.adapter import LocalAdapter

__all__ = ["LocalAdapter"]
