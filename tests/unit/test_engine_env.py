"""The environment allow-list (adapters/agent.py): what an engine and an agent may inherit."""

from __future__ import annotations

from adapters.agent import CONTROL_PLANE_SECRETS, agent_environ, engine_environ

CONTROL_PLANE = {
    "PATH": "/usr/bin",
    "HOME": "/home/u",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TZ": "UTC",
    "CUDA_VISIBLE_DEVICES": "0,1",
    "NVIDIA_VISIBLE_DEVICES": "all",
    "HIP_VISIBLE_DEVICES": "0",
    "ROCR_VISIBLE_DEVICES": "0",
    "PYTHONPATH": "/srv/inferia",
    "HTTPS_PROXY": "http://proxy:3128",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "HF_TOKEN": "hf-secret",
    "SOMETHING_ELSE": "x",
    **{name: f"{name.lower()}-value" for name in CONTROL_PLANE_SECRETS},
}
ALLOWED = {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"}
ALLOWED |= {"HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"}


def test_engine_gets_the_allow_list_and_its_own_env_only() -> None:
    env = engine_environ(CONTROL_PLANE, {"INFERIA_INFERENCE_KEY": "ek", "OMP_NUM_THREADS": "2"})
    assert set(env) == ALLOWED | {"INFERIA_INFERENCE_KEY", "OMP_NUM_THREADS"}
    assert env["INFERIA_INFERENCE_KEY"] == "ek"


def test_agent_gets_the_allow_list_and_what_it_needs_itself() -> None:
    env = agent_environ(CONTROL_PLANE)
    assert set(env) == ALLOWED | {"PYTHONPATH", "HTTPS_PROXY"}
    assert not set(env) & set(CONTROL_PLANE_SECRETS)
    assert "HF_TOKEN" not in env and "AWS_SECRET_ACCESS_KEY" not in env  # a model's `env` can give them


def test_the_model_env_wins_over_the_inherited_one() -> None:
    assert engine_environ({"PATH": "/usr/bin"}, {"PATH": "/opt/engine/bin"})["PATH"] == "/opt/engine/bin"
