"""Actor handles of the control plane that `up` runs, for Python users in another process.

    from controller.handles import connect
    h = connect()                      # reads <data dir>/runtime.json (INFERIA_DATA_DIR or ~/.inferia)
    ray.get(h.inventory.routing_table.remote())
    ray.get(h.pool(pool_id).summary.remote())
    await h.node(node_id).status()

It joins the Ray that `up` started (a private `ray.init()` is joinable by its GCS address, which `up`
records) or the cluster `up` joined, in the namespace `inferia`.
"""

from __future__ import annotations

from pathlib import Path

from actors.handles import Handles
from actors.handles import connect as connect_address
from controller import runtime_file
from controller.config import load_settings


class NotRunning(RuntimeError):
    pass


def connect(data_dir: str | Path | None = None) -> Handles:
    """Handles of the control plane running on `data_dir` (default: the settings' data dir)."""
    where = Path(data_dir).expanduser().resolve() if data_dir is not None else load_settings().data_dir
    found = runtime_file.live(where, require_up_command=False)
    if found is None:
        raise NotRunning(f"no control plane runs on the data dir {where} (start one with `inferia-orch up`)")
    info, _ = found
    if info.state != runtime_file.RUNNING or not info.ray_address:
        raise NotRunning(f"the control plane on {where} is still starting (pid {info.pid}); try again shortly")
    return connect_address(info.ray_address, pool_hosts=info.pool_hosts)
