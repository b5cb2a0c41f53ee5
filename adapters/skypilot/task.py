"""What runs on a node's cluster: the node agent (setup + run step) and the engine it supervises."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from adapters.agent import command_line as agent_command_line
from adapters.base import PermanentProviderError, ProvisionRequest, WorkloadSpec

if TYPE_CHECKING:
    import sky

PROJECT_ROOT = Path(__file__).resolve().parents[2]
AGENT_DIR = "~/.inferia-agent"  # on the node: the `controller` package is mounted here
AGENT_DIR_SH = "$HOME/.inferia-agent"  # the same, for a double-quoted shell word
CONTAINER = "inferia-engine"
DEFAULT_IMAGES = {
    "vllm": "vllm/vllm-openai:latest",
    "ollama": "ollama/ollama:latest",
    "llamacpp": "ghcr.io/ggml-org/llama.cpp:server-cuda",
}
# the port each image listens on inside its container
CONTAINER_PORTS = {"vllm": 8000, "ollama": 11434, "llamacpp": 8080}
MAX_NAME = 35  # SkyPilot's shortest cluster-name limit among clouds (e.g. GCP) leaves room for suffixes


def cluster_name(prefix: str, node_id: str) -> str:
    """A stable, cloud-safe cluster name for a node: prefix + sanitized id (+ hash when shortened)."""
    body = re.sub(r"[^a-z0-9-]+", "-", node_id.lower()).strip("-")
    name = f"{prefix}{body}"
    if len(name) > MAX_NAME or body != node_id.lower():
        digest = hashlib.sha256(node_id.encode()).hexdigest()[:8]
        name = f"{prefix}{body}"[: MAX_NAME - 9].rstrip("-") + "-" + digest
    return name


def pick_port(node_id: str, port_range: tuple[int, int], workload: WorkloadSpec | None) -> int:
    if workload is not None and workload.port is not None:
        return workload.port
    low, high = port_range
    return low + int(hashlib.sha256(node_id.encode()).hexdigest(), 16) % (high - low + 1)


@dataclass(frozen=True)
class Engine:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # secret-bearing: travels as a task secret
    health_path: str = "/v1/models"
    served_model: str = ""
    post_start: list[str] | None = None


def _docker(workload: WorkloadSpec, port: int, inner_port: int, env_names: list[str], args: list[str]) -> list[str]:
    image = workload.image or DEFAULT_IMAGES.get(workload.engine)
    if not image:
        raise PermanentProviderError(f"engine {workload.engine!r} needs an image on the skypilot provider")
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
    """The engine command the agent runs on the node: a container (GPU access) or, for custom without image,
    the command itself."""
    key = workload.inference_key
    name = workload.model_name
    if workload.engine == "vllm":
        env = {**workload.env, **({"VLLM_API_KEY": key} if key else {})}
        args = ["--model", workload.source or name, "--served-model-name", name, "--port", "8000", *workload.args]
        return Engine(_docker(workload, port, 8000, sorted(env), args), env, workload.health_path or "/health", name)
    if workload.engine == "ollama":
        if not workload.source:
            raise PermanentProviderError("ollama needs the model tag as source (e.g. 'llama3.2:1b')")
        argv = _docker(workload, port, 11434, sorted(workload.env), [])
        return Engine(
            argv,
            dict(workload.env),
            workload.health_path or "/api/tags",
            workload.source,
            ["docker", "exec", CONTAINER, "ollama", "pull", workload.source],
        )
    if workload.engine == "llamacpp":
        if not workload.source:
            raise PermanentProviderError("llamacpp on skypilot needs a Hugging Face GGUF repo as source")
        env = {**workload.env, **({"LLAMA_API_KEY": key} if key else {})}
        args = ["-hf", workload.source, "--alias", name, "--host", "0.0.0.0", "--port", "8080", *workload.args]
        return Engine(_docker(workload, port, 8080, sorted(env), args), env, workload.health_path or "/v1/models", name)
    if workload.engine == "custom":
        if not workload.args:
            raise PermanentProviderError("engine 'custom' needs the full command line in args")
        values = {"{port}": str(port), "{host}": "0.0.0.0", "{model}": name, "{source}": workload.source or ""}
        args = [_fill(a, values) for a in workload.args]
        env = {**workload.env, **({"INFERIA_INFERENCE_KEY": key} if key else {})}
        argv = _docker(workload, port, port, sorted(env), args) if workload.image else args
        return Engine(argv, env, workload.health_path or "/v1/models", name)
    raise PermanentProviderError(f"unknown engine {workload.engine!r}; use vllm, ollama, llamacpp or custom")


def _fill(arg: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        arg = arg.replace(placeholder, value)
    return arg


SETUP = f"""set -e
mkdir -p {AGENT_DIR}
python3 -c 'import httpx, psutil' 2>/dev/null || python3 -m pip install --user -q 'httpx>=0.27' 'psutil>=5.9'
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
    )
    # quoted arguments keep `~` literal: the log path is expanded by the shell instead
    cmd = " ".join(shlex.quote(a) for a in argv) + f' --engine-log "{AGENT_DIR_SH}/engine.log"'
    return f"""cd {AGENT_DIR}
if [ -f agent.pid ] && kill -0 "$(cat agent.pid)" 2>/dev/null; then echo "agent already running"; exit 0; fi
echo $$ > agent.pid
export PYTHONUNBUFFERED=1 PYTHONPATH={AGENT_DIR}
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
        file_mounts={f"{AGENT_DIR}/controller": str(PROJECT_ROOT / "controller")},
    )
    task.set_resources(resources)
    return task
