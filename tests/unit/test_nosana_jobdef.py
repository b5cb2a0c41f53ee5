"""The job-definition builder against the Nosana SDK's own schema and validator."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from adapters.base import WorkloadSpec
from adapters.nosana.jobdef import build_job_definition

SIDECAR = Path(__file__).resolve().parents[2] / "sidecar"
SCHEMA = json.loads((SIDECAR / "schema" / "job-definition.schema.json").read_text())


def _w(engine: str, **kw: Any) -> WorkloadSpec:
    return WorkloadSpec(deployment_id="dep-1", model_name="tiny", engine=engine, **kw)


WORKLOADS = [
    _w("vllm", source="Qwen/Qwen2.5-0.5B", inference_key="ik-secret", gpus=1),
    _w("ollama", source="qwen2.5:0.5b"),
    _w("llamacpp", source="org/tiny-GGUF", inference_key="ik-2"),
    _w("custom", image="ghcr.io/x/engine:1", args=("serve", "--port", "{port}", "--model", "{model}"), port=9000),
]


@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w.engine)
def test_matches_the_sdk_schema(workload: WorkloadSpec) -> None:
    built = build_job_definition(workload)
    jsonschema.validate(built.definition, SCHEMA)
    op = built.definition["ops"][0]
    assert op["type"] == "container/run"
    expose = op["args"]["expose"][0]
    assert expose["port"] == built.port
    assert expose["health_checks"][0]["path"] == built.health_path


def test_sdk_validator_accepts_every_engine() -> None:
    node = shutil.which("node")
    assert node, "node is required"
    for w in WORKLOADS:
        out = subprocess.run(
            [node, str(SIDECAR / "scripts" / "validate-job.js")],
            input=json.dumps(build_job_definition(w).definition),
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        assert json.loads(out.stdout) == {"success": True, "errors": []}, (w.engine, out.stdout)


def test_vllm_details_and_key() -> None:
    built = build_job_definition(WORKLOADS[0])
    args = built.definition["ops"][0]["args"]
    assert args["image"].startswith("vllm/vllm-openai:")
    assert args["gpu"] is True
    assert args["cmd"][:4] == ["--model", "Qwen/Qwen2.5-0.5B", "--served-model-name", "tiny"]
    # the deployment's own key, for the engine (under its own variable and the catalog's common one)
    assert args["env"] == {"VLLM_API_KEY": "ik-secret", "INFERIA_INFERENCE_KEY": "ik-secret"}
    assert built.port == 8000 and built.health_path == "/health"


def test_custom_substitutes_port_and_model() -> None:
    args = build_job_definition(WORKLOADS[3]).definition["ops"][0]["args"]
    assert args["cmd"] == ["serve", "--port", "9000", "--model", "tiny"]
    assert args["gpu"] is False


def test_pure_and_deterministic() -> None:
    assert build_job_definition(WORKLOADS[0]) == build_job_definition(WORKLOADS[0])


def test_refuses_platform_secrets_and_bad_engines() -> None:
    leaky = _w("vllm", env={"X": "platform-token-123456"})
    with pytest.raises(ValueError, match="secret"):
        build_job_definition(leaky, forbidden=["platform-token-123456"])
    with pytest.raises(ValueError, match="image"):
        build_job_definition(_w("custom", args=("x",)))
    with pytest.raises(ValueError, match="not supported"):
        build_job_definition(_w("tgi"))


def test_required_vram_and_image_override() -> None:
    built = build_job_definition(WORKLOADS[0], images={"vllm": "vllm/vllm-openai:v0.7.0"}, required_vram_gb=24)
    args = built.definition["ops"][0]["args"]
    assert args["image"] == "vllm/vllm-openai:v0.7.0" and args["required_vram"] == 24
    jsonschema.validate(built.definition, SCHEMA)
