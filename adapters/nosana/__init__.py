"""The Nosana DePIN provider: jobs on the Nosana GPU grid, through the Node.js sidecar in sidecar/."""

from __future__ import annotations

from adapters.nosana.adapter import NosanaAdapter

__all__ = ["NosanaAdapter"]
