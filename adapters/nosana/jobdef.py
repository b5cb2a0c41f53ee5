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

from adapters import engines as catalog
from adapters.base import PermanentProviderError, WorkloadSpec

JOB_VERSION = "0.1"
OP_ID = "engine"


@dataclass(frozen=True)
class BuiltJob:
    definition: dict[str, Any]
    port: int
    health_path: str
    served_model: str


def _engine_container(
    w: WorkloadSpec, port: int, images: Mapping[str, str]
) -> tuple[str, list[str] | None, list[str] | None, dict[str, str]]:
    """(image, entrypoint, cmd, env) for the workload's engine."""
    try:
        image = catalog.image_of(w, "nosana", images)
    except PermanentProviderError as exc:
        raise ValueError(str(exc)) from None
    env = {**w.env, **catalog.key_env(w)}
    if w.engine == "ollama":
        tag = w.source or w.model_name
        env.update(catalog.ollama_env("0.0.0.0", port))
        script = f"ollama serve & until ollama list >/dev/null 2>&1; do sleep 1; done; ollama pull {tag} && wait"
        return image, ["/bin/sh", "-c"], [script], env
    return image, None, catalog.server_args(w, "0.0.0.0", port) or None, env


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
    try:
        catalog.engine(workload.engine, "nosana")
    except PermanentProviderError as exc:
        raise ValueError(str(exc)) from None
    port = catalog.container_port(workload)
    health = catalog.health_path(workload)
    image, entrypoint, cmd, env = _engine_container(workload, port, images or {})
    gpu = workload.gpus > 0 or workload.engine in ("vllm", "llamacpp")  # the images are GPU builds
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
    return BuiltJob(definition=definition, port=port, health_path=health, served_model=catalog.served_model(workload))
