"""How each engine is started on a local node: argv, environment, health path, served model name.

`build_engine` is pure apart from looking up whether the engine is installed. The deployment's
inference key always travels through the engine's environment, never its command line.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from adapters.base import PermanentProviderError, WorkloadSpec
from adapters.local.gpu import detect_gpus

ENGINES = ("llamacpp", "vllm", "ollama", "custom")
MASK = "***"
# argv flags whose value is a secret (masked when a command line is logged or stored)
SECRET_FLAGS = frozenset({"--api_key", "--api-key", "--token", "--hf-token"})


@dataclass(frozen=True)
class EngineSpec:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    health_path: str = "/v1/models"
    served_model: str = ""
    post_start: list[str] | None = None  # run once after the engine first answers (ollama pull)
    secrets: tuple[str, ...] = ()  # values that must never be logged

    def __repr__(self) -> str:  # never print the env (it holds the key)
        return (
            f"EngineSpec(argv={self.masked_argv()!r}, env_keys={sorted(self.env)!r}, "
            f"health_path={self.health_path!r}, served_model={self.served_model!r})"
        )

    def masked_argv(self) -> list[str]:
        return mask_argv(self.argv, self.secrets)


def mask_argv(argv: Iterable[str], secrets: Iterable[str] = ()) -> list[str]:
    """A copy of argv safe to log: values of secret flags and any known secret replaced by ***."""
    hidden = [s for s in secrets if s]
    out: list[str] = []
    after_flag = False
    for arg in argv:
        if after_flag:
            out.append(MASK)
            after_flag = False
            continue
        flag, eq, _ = arg.partition("=")
        if flag in SECRET_FLAGS:
            if eq:
                out.append(f"{flag}={MASK}")
            else:
                out.append(arg)
                after_flag = True
            continue
        for secret in hidden:
            arg = arg.replace(secret, MASK)
        out.append(arg)
    return out


def _check_gpus(workload: WorkloadSpec, available_gpus: int | None) -> None:
    if workload.gpus <= 0:
        return
    have = len(detect_gpus()) if available_gpus is None else available_gpus
    if have < workload.gpus:
        raise PermanentProviderError(f"this machine has {have} GPUs; the deployment asks for {workload.gpus}")


def _require_binary(engine: str, binary: str) -> str:
    if shutil.which(binary) is None:
        raise PermanentProviderError(f"engine {engine!r} is not installed here: the {binary!r} command is not on PATH")
    return binary


def _key_env(workload: WorkloadSpec, var: str) -> dict[str, str]:
    return {var: workload.inference_key} if workload.inference_key else {}


def _secrets(workload: WorkloadSpec) -> tuple[str, ...]:
    return (workload.inference_key,) if workload.inference_key else ()


def _llamacpp(workload: WorkloadSpec, host: str, port: int) -> EngineSpec:
    if importlib.util.find_spec("llama_cpp") is None:
        raise PermanentProviderError(
            "engine 'llamacpp' is not installed here: pip install 'inferia-orchestration[llamacpp]'"
        )
    source = workload.source
    if not source or not Path(source).expanduser().is_file():
        raise PermanentProviderError(f"llamacpp needs a GGUF file as source; not a file: {source!r}")
    argv = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(Path(source).expanduser()),
        "--host",
        host,
        "--port",
        str(port),
        "--model_alias",
        workload.model_name,
        *workload.args,
    ]
    # llama_cpp.server's pydantic settings read API_KEY from the environment; uvicorn also
    # honours HOST/PORT from the environment, so pin them to what the command line says
    # INTERRUPT_REQUESTS: llama_cpp.server otherwise aborts an in-flight (streaming) completion whenever
    # another request arrives, the agent's health probe included
    env = {
        "INTERRUPT_REQUESTS": "false",
        **workload.env,
        "HOST": host,
        "PORT": str(port),
        **_key_env(workload, "API_KEY"),
    }
    return EngineSpec(
        argv=argv,
        env=env,
        health_path=workload.health_path or "/v1/models",
        served_model=workload.model_name,
        secrets=_secrets(workload),
    )


def _vllm(workload: WorkloadSpec, host: str, port: int) -> EngineSpec:
    binary = _require_binary("vllm", "vllm")
    argv = [
        binary,
        "serve",
        workload.source or workload.model_name,
        "--host",
        host,
        "--port",
        str(port),
        "--served-model-name",
        workload.model_name,
        *workload.args,
    ]
    return EngineSpec(
        argv=argv,
        env={**workload.env, **_key_env(workload, "VLLM_API_KEY")},
        health_path=workload.health_path or "/health",
        served_model=workload.model_name,
        secrets=_secrets(workload),
    )


def _ollama(workload: WorkloadSpec, host: str, port: int) -> EngineSpec:
    binary = _require_binary("ollama", "ollama")
    if not workload.source:
        raise PermanentProviderError("ollama needs the model tag as source (e.g. 'llama3.2:1b')")
    return EngineSpec(
        argv=[binary, "serve"],
        env={**workload.env, "OLLAMA_HOST": f"{host}:{port}"},
        health_path=workload.health_path or "/api/tags",
        served_model=workload.source,
        post_start=[binary, "pull", workload.source],
        secrets=_secrets(workload),
    )


def _custom(workload: WorkloadSpec, host: str, port: int) -> EngineSpec:
    if not workload.args:
        raise PermanentProviderError("engine 'custom' needs the full command line in args")
    values = {
        "{port}": str(port),
        "{host}": host,
        "{model}": workload.model_name,
        "{source}": workload.source or "",
    }
    argv: list[str] = []
    for arg in workload.args:
        for placeholder, value in values.items():
            arg = arg.replace(placeholder, value)
        argv.append(arg)
    return EngineSpec(
        argv=argv,
        env={**workload.env, **_key_env(workload, "INFERIA_INFERENCE_KEY")},
        health_path=workload.health_path or "/v1/models",
        served_model=workload.model_name,
        secrets=_secrets(workload),
    )


_BUILDERS: dict[str, Callable[[WorkloadSpec, str, int], EngineSpec]] = {
    "llamacpp": _llamacpp,
    "vllm": _vllm,
    "ollama": _ollama,
    "custom": _custom,
}


def build_engine(workload: WorkloadSpec, host: str, port: int, *, available_gpus: int | None = None) -> EngineSpec:
    """The command that serves `workload` on host:port.

    `available_gpus` overrides the GPU count of this machine (None: ask NVML). Raises
    PermanentProviderError for an unknown or missing engine, a bad source or too few GPUs.
    """
    builder = _BUILDERS.get(workload.engine)
    if builder is None:
        raise PermanentProviderError(
            f"unknown engine {workload.engine!r} for the local provider; use one of {', '.join(ENGINES)}"
        )
    _check_gpus(workload, available_gpus)
    return builder(workload, host, port)
