"""The API replica's event loop: Ray's own (uvloop) main loop, no second thread.

By default Serve runs a replica's code on a loop of its own (`asyncio.new_event_loop()`, the default asyncio
loop) in a second thread, so every request of the data port's uvicorn server and the proxy's upstream client
also hands the GIL between that thread and Ray's. Measured in bench/proxy.py on the 2-core machine (c16,
non-streamed; docs/PERFORMANCE.md): 1,131 req/s as Serve starts it, 1,796 with uvloop in that thread,
3,480 with the replica's code on Ray's main loop (`RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0` in the
replica's environment, which Ray runs on uvloop). The setup hook (`worker_process_setup_hook`, run when the
worker process starts, before the replica exists) still sets uvloop's policy, so a loop Serve makes itself
is uvloop too. Nothing in serve_app blocks its loop (no `ray.get`, no sleeps): the replica's code may share
Ray's loop.
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


RUNTIME_ENV = {
    "worker_process_setup_hook": HOOK,
    "env_vars": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"},
}
