"""Nosana job definitions for an engine container: a pure function of the workload.

The shape follows the Nosana SDK's `JobDefinition` type (`@nosana/sdk` dist/types/job.d.ts); the unit
tests validate the output against the SDK's own schema (sidecar/schema/job-definition.schema.json)
and its validator. The definition is pinned to public IPFS: it carries the deployment's own inference
key (the engine needs it) and never a platform secret.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from adapters.base import WorkloadSpec

JOB_VERSION = "0.1"
OP_ID = "engine"

DEFAULT_IMAGES: dict[str, str] = {
    "vllm": "vllm/vllm-openai:v0.6.3",
    "ollama": "ollama/ollama:0.3.14",
    "llamacpp": "ghcr.io/ggml-org/llama.cpp:server-cuda",
}
DEFAULT_PORTS: dict[str, int] = {"vllm": 8000, "ollama": 11434, "llamacpp": 8080, "custom": 8000}
DEFAULT_HEALTH: dict[str, str] = {
    "vllm": "/health",
    "ollama": "/api/version",
    "llamacpp": "/health",
    "custom": "/health",
}


@dataclass(frozen=True)
class BuiltJob:
    definition: dict[str, Any]
    port: int
    health_path: str
    served_model: str


def _subst(args: Iterable[str], port: int, model: str) -> list[str]:
    return [a.replace("{port}", str(port)).replace("{model}", model) for a in args]


def _engine_container(
    w: WorkloadSpec, port: int, images: Mapping[str, str]
) -> tuple[str, list[str] | None, list[str] | None, dict[str, str]]:
    """(image, entrypoint, cmd, env) for the workload's engine."""
    env = dict(w.env)
    image = w.image or images.get(w.engine) or DEFAULT_IMAGES.get(w.engine)
    if w.engine == "vllm":
        cmd = ["--model", w.source or w.model_name, "--served-model-name", w.model_name]
        cmd += ["--host", "0.0.0.0", "--port", str(port), *_subst(w.args, port, w.model_name)]
        if w.inference_key:
            env["VLLM_API_KEY"] = w.inference_key
        return str(image), None, cmd, env
    if w.engine == "ollama":
        tag = w.source or w.model_name
        env["OLLAMA_HOST"] = f"0.0.0.0:{port}"
        script = f"ollama serve & until ollama list >/dev/null 2>&1; do sleep 1; done; ollama pull {tag} && wait"
        return str(image), ["/bin/sh", "-c"], [script], env
    if w.engine == "llamacpp":
        cmd = ["--host", "0.0.0.0", "--port", str(port), "-hf", w.source or w.model_name, "--alias", w.model_name]
        cmd += _subst(w.args, port, w.model_name)
        if w.inference_key:
            env["LLAMA_API_KEY"] = w.inference_key
        return str(image), None, cmd, env
    if w.engine == "custom":
        if not image:
            raise ValueError("a custom engine on Nosana needs an image")
        if w.inference_key:
            env["INFERIA_INFERENCE_KEY"] = w.inference_key
        return str(image), None, _subst(w.args, port, w.model_name) or None, env
    raise ValueError(f"engine {w.engine!r} is not supported on Nosana (vllm, ollama, llamacpp, custom)")


def build_job_definition(
    workload: WorkloadSpec,
    *,
    images: Mapping[str, str] | None = None,
    required_vram_gb: int | None = None,
    forbidden: Iterable[str] = (),
) -> BuiltJob:
    """A Nosana container job running the workload's engine, its port exposed with an HTTP health check.

    `forbidden`: secret values (the sidecar key, the platform token) that must not appear anywhere in it.
    """
    port = workload.port or DEFAULT_PORTS.get(workload.engine, 8000)
    health = workload.health_path or DEFAULT_HEALTH.get(workload.engine, "/health")
    image, entrypoint, cmd, env = _engine_container(workload, port, images or {})
    gpu = workload.gpus > 0 or workload.engine in ("vllm", "llamacpp")
    args: dict[str, Any] = {
        "image": image,
        "gpu": gpu,
        "expose": [
            {
                "port": port,
                "type": "api",
                "health_checks": [
                    {"type": "http", "path": health, "method": "GET", "expected_status": 200, "continuous": True}
                ],
            }
        ],
    }
    if entrypoint:
        args["entrypoint"] = entrypoint
    if cmd:
        args["cmd"] = cmd
    if env:
        args["env"] = env
    if required_vram_gb:
        args["required_vram"] = int(required_vram_gb)
    definition: dict[str, Any] = {
        "version": JOB_VERSION,
        "type": "container",
        "meta": {
            "trigger": "inferia",
            "inferia": {"deployment_id": workload.deployment_id, "model": workload.model_name},
        },
        "ops": [{"type": "container/run", "id": OP_ID, "args": args}],
    }
    text = json.dumps(definition)
    for secret in forbidden:
        if secret and secret in text:
            raise ValueError("the job definition would carry a platform secret; refusing to build it")
    return BuiltJob(definition=definition, port=port, health_path=health, served_model=workload.model_name)
