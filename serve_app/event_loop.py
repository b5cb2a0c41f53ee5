"""The API replica's event loop: uvloop, installed before Ray Serve creates the replica's user-code loop.

Serve runs a replica's code on a loop of its own (`asyncio.new_event_loop()` in a separate thread), which
follows the process's event loop policy. This hook (the replica's `worker_process_setup_hook`, run by Ray when
the worker process starts, before the replica exists) sets uvloop's policy, so the data port's uvicorn server
and the proxy's aiohttp client run on uvloop: measured in bench/proxy.py (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio

HOOK = "serve_app.event_loop.install"


def install() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is installed with ray[serve]/uvicorn[standard]
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
