"""What runs on a node's cluster: the node agent (setup + run step) and the engine it supervises."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from adapters import agent as agent_module
from adapters import engines as catalog
from adapters.agent import command_line as agent_command_line
from adapters.base import PermanentProviderError, ProvisionRequest, WorkloadSpec

if TYPE_CHECKING:
    import sky

AGENT_FILE = Path(agent_module.__file__).resolve()  # self-contained: stdlib + httpx (psutil optional)
AGENT_DIR = "~/.inferia-agent"  # on the node: the agent file alone is mounted here
AGENT_DIR_SH = "$HOME/.inferia-agent"  # the same, for a double-quoted shell word
AGENT_SCRIPT = "inferia_agent.py"
CONTAINER = "inferia-engine"
MAX_NAME = 35  # SkyPilot's shortest cluster-name limit among clouds (e.g. GCP) leaves room for suffixes
POOL_TAG_LEN = 6


def pool_prefix(prefix: str, pool_id: str) -> str:
    """What every cluster of one pool's name starts with: the configured prefix + a tag of the pool id."""
    return f"{prefix}{hashlib.sha256(pool_id.encode()).hexdigest()[:POOL_TAG_LEN]}-"


def cluster_name(prefix: str, pool_id: str, node_id: str) -> str:
    """A stable, cloud-safe cluster name for a node: the pool's prefix + sanitized id (+ hash when shortened).
    Node ids as the control plane makes them (node-<12 hex>) always fit unhashed, so the name gives the id back."""
    head = pool_prefix(prefix, pool_id)
    body = re.sub(r"[^a-z0-9-]+", "-", node_id.lower()).strip("-")
    name = f"{head}{body}"
    if len(name) > MAX_NAME or body != node_id:
        digest = hashlib.sha256(node_id.encode()).hexdigest()[:8]
        name = f"{head}{body}"[: MAX_NAME - 9].rstrip("-") + "-" + digest
    return name


def node_id_of(prefix: str, pool_id: str, name: str) -> str | None:
    """The node id a cluster name of this pool was made from; None for another pool's or a hashed name."""
    head = pool_prefix(prefix, pool_id)
    if not name.startswith(head):
        return None
    node_id = name[len(head) :]
    return node_id if cluster_name(prefix, pool_id, node_id) == name else None


def pick_port(node_id: str, port_range: tuple[int, int], workload: WorkloadSpec | None) -> int:
    if workload is not None and workload.port is not None:
        return workload.port
    low, high = port_range
    return low + int(hashlib.sha256(node_id.encode()).hexdigest(), 16) % (high - low + 1)


@dataclass(frozen=True)
class Engine:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # secret-bearing: travels as a task secret
    health_path: str = "/health"
    served_model: str = ""
    post_start: list[str] | None = None


def _docker(workload: WorkloadSpec, port: int, inner_port: int, env_names: list[str], args: list[str]) -> list[str]:
    image = catalog.image_of(workload, "skypilot")
    gpus = ["--gpus", "all"] if workload.gpus > 0 else []
    env_flags = [flag for name in env_names for flag in ("-e", name)]  # values come from the agent's env
    return [
        "docker",
        "run",
        "--rm",
        "--name",
        CONTAINER,
        *gpus,
        "--ipc=host",
        "-p",
        f"{port}:{inner_port}",
        *env_flags,
        image,
        *args,
    ]


def build_engine(workload: WorkloadSpec, port: int) -> Engine:
    """The engine command the agent runs on the node: the catalog's image in a container (GPU access), or,
    for custom without an image, the command itself on the VM."""
    catalog.engine(workload.engine, "skypilot")
    health = catalog.health_path(workload)
    served = catalog.served_model(workload)
    env = {**workload.env, **catalog.key_env(workload)}
    if workload.engine == "ollama":
        if not workload.source:
            raise PermanentProviderError("ollama needs the model tag as source (e.g. 'llama3.2:1b')")
        inner = catalog.container_port(workload)
        env.update(catalog.ollama_env("0.0.0.0", inner))
        argv = _docker(workload, port, inner, sorted(env), [])
        return Engine(argv, env, health, served, ["docker", "exec", CONTAINER, "ollama", "pull", workload.source])
    if workload.engine == "custom":
        if not workload.args:
            raise PermanentProviderError("engine 'custom' needs the full command line in args")
        args = catalog.server_args(workload, "0.0.0.0", port)
        argv = _docker(workload, port, port, sorted(env), args) if workload.image else args
        return Engine(argv, env, health, served)
    if workload.engine == "llamacpp" and not workload.source:
        raise PermanentProviderError("llamacpp on skypilot needs a Hugging Face GGUF repo as source")
    inner = catalog.engine(workload.engine).port  # the image's own port; the VM's port maps onto it
    args = catalog.server_args(workload, "0.0.0.0", inner)
    return Engine(_docker(workload, port, inner, sorted(env), args), env, health, served)


SETUP = f"""set -e
mkdir -p {AGENT_DIR}
python3 -c 'import httpx' 2>/dev/null || python3 -m pip install --user -q 'httpx>=0.27' 'psutil>=5.9'
"""


def run_script(req: ProvisionRequest, endpoint: str | None, engine: Engine | None) -> str:
    """The run step: the node agent in the foreground (the job's log is the agent's log).

    A second start on the same cluster (a retried provision) finds the live agent and exits."""
    argv = agent_command_line(
        "python3",
        req.node_id,
        req.heartbeat_url,
        req.heartbeat_interval_s,
        fallback_url=req.heartbeat_fallback_url,
        endpoint=endpoint,
        health_path=engine.health_path if engine else None,
        engine_cmd=engine.argv if engine else None,
        post_start_cmd=engine.post_start if engine else None,
        script=AGENT_SCRIPT,
    )
    # quoted arguments keep `~` literal: the log path is expanded by the shell instead
    cmd = " ".join(shlex.quote(a) for a in argv) + f' --engine-log "{AGENT_DIR_SH}/engine.log"'
    return f"""cd {AGENT_DIR}
if [ -f agent.pid ] && kill -0 "$(cat agent.pid)" 2>/dev/null; then echo "agent already running"; exit 0; fi
echo $$ > agent.pid
export PYTHONUNBUFFERED=1
exec {cmd}
"""


def build_task(
    req: ProvisionRequest, resources: sky.Resources, endpoint: str | None, engine: Engine | None, *, run: bool
) -> sky.Task:
    """The node's task. `run=False`: provision + setup only (launch); `run=True`: the agent (exec)."""
    import sky

    secrets = {"INFERIA_NODE_TOKEN": req.node_token}
    if engine is not None:
        secrets["INFERIA_ENGINE_ENV"] = json.dumps(engine.env)
    if req.workload is not None and req.workload.inference_key:
        secrets["INFERIA_PROBE_KEY"] = req.workload.inference_key
    task = sky.Task(
        name=f"inferia-{req.node_id}"[:60],
        setup=SETUP,
        run=run_script(req, endpoint, engine) if run else None,
        envs={"INFERIA_NODE_ID": req.node_id, "INFERIA_POOL_ID": req.pool_id},
        secrets=secrets,
        file_mounts={f"{AGENT_DIR}/{AGENT_SCRIPT}": str(AGENT_FILE)},
    )
    task.set_resources(resources)
    return task
