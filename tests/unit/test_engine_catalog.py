"""One engine catalog (adapters/engines.py): every adapter says the same about an engine."""

from __future__ import annotations

import pytest

from tests.support import skypilot_catalog

skypilot_catalog.install()  # before sky is imported (adapters.skypilot.task imports it lazily)

from adapters import engines as catalog  # noqa: E402
from adapters.base import PermanentProviderError, WorkloadSpec  # noqa: E402
from adapters.kubernetes import manifests as m  # noqa: E402
from adapters.kubernetes.config import parse  # noqa: E402
from adapters.nosana.jobdef import build_job_definition  # noqa: E402
from adapters.skypilot.task import build_engine as sky_engine  # noqa: E402

CONTAINER_ENGINES = [n for n, e in catalog.CATALOG.items() if e.containers]


def _w(engine: str) -> WorkloadSpec:
    image = "ghcr.io/example/custom:1" if engine == "custom" else None
    args = ("serve", "--port", "{port}") if engine == "custom" else ()
    return WorkloadSpec("dep-1", "m", engine, image=image, source="org/m-GGUF", args=args, inference_key="ek_1")


@pytest.mark.parametrize("engine", CONTAINER_ENGINES)
def test_kubernetes_nosana_and_skypilot_agree_with_the_catalog(engine: str) -> None:
    info = catalog.engine(engine)
    w = _w(engine)
    dep = m.build_deployment("n1", "p1", w, parse({}), {})
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == info.health_path
    assert c["ports"][0]["containerPort"] == info.port
    assert c["image"] == (info.image or w.image)
    key_vars = {e["name"] for e in c["env"] if "valueFrom" in e}
    assert key_vars == set(catalog.key_env_names(w))

    job = build_job_definition(w)
    op = job.definition["ops"][0]["args"]
    assert job.health_path == info.health_path and job.port == info.port
    assert op["image"] == (info.image or w.image)
    assert {k for k, v in op.get("env", {}).items() if v == "ek_1"} == set(catalog.key_env_names(w))

    sky = sky_engine(w, 8123)
    assert sky.health_path == info.health_path
    assert (info.image or w.image) in sky.argv
    assert {k for k, v in sky.env.items() if v == "ek_1"} == set(catalog.key_env_names(w))
    for default in info.default_args:
        assert default in c["args"] and default in op["cmd"] and default in sky.argv


def test_llamacpp_is_llama_servers_options_everywhere() -> None:
    w = WorkloadSpec("dep-1", "m", "llamacpp", source="org/m-GGUF", args=("-t", "2", "-c", "4096"))
    args = catalog.server_args(w, "0.0.0.0", 8080)
    assert args[:4] == ["-hf", "org/m-GGUF", "--alias", "m"] and args[-4:] == ["-t", "2", "-c", "4096"]
    assert catalog.engine("llamacpp").health_path == "/health"


@pytest.mark.parametrize("provider", ["kubernetes", "nosana", "skypilot"])
def test_llamacpp_python_is_local_only(provider: str) -> None:
    with pytest.raises(PermanentProviderError, match="runs only on the local provider"):
        catalog.engine("llamacpp-python", provider)
