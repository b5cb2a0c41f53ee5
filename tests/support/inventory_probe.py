"""Reach the inventory actor of a control plane that runs in another process (`inferia-orch up`): register nodes
whose tokens the test knows, read nodes back. It runs as its own process (`python -m tests.support.inventory_probe`)
because a test process may already hold a Ray of its own; `probe()` runs it and returns its JSON answer.

    register <ray address> '<json list of node infos>'   -> null
    read <ray address> '<json list of node ids>'         -> {node_id: the inventory's view of it, or null}
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def probe(command: str, ray_address: str, arg: Any, timeout_s: float = 120.0) -> Any:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-m", "tests.support.inventory_probe", command, ray_address, json.dumps(arg)],
        cwd=str(ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert out.returncode == 0, f"inventory probe {command} -> {out.returncode}\n{out.stderr[-3000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    import ray

    from actors.runtime import INVENTORY, NAMESPACE

    command, address, arg = argv[0], argv[1], json.loads(argv[2])
    ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.ERROR)
    inv = ray.get_actor(INVENTORY)
    if command == "register":
        ray.get(inv.register_many.remote(arg), timeout=60)
        answer: Any = None
    elif command == "read":
        answer = dict(zip(arg, ray.get([inv.node.remote(nid) for nid in arg], timeout=60), strict=True))
    else:
        raise SystemExit(f"unknown command {command!r}")
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
