"""The `provider` fixture: one harness per adapter (tests/conformance/providers.py); every contract test
runs once per adapter. Adding an adapter: a harness class and its name in providers.HARNESSES."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conformance import providers as pv


@pytest.fixture(scope="session")
def nosana_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The real sidecar on the simulated market (one for the session: it starts node + fake IPFS)."""
    from tests.support.nosana_sim import NosanaSim

    sim = NosanaSim(tmp_path_factory.mktemp("nosana-conf"), f"conf-{uuid.uuid4().hex[:6]}")
    try:
        yield sim
    finally:
        sim.close()


@pytest.fixture(params=pv.HARNESSES)
async def provider(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[pv.Harness]:
    name = request.param
    harness: pv.Harness
    if name == "local":
        harness = pv.LocalHarness(tmp_path)
    elif name == "instant":
        harness = pv.InstantHarness(tmp_path)
    elif name == "skypilot":
        harness = pv.SkyPilotHarness(tmp_path)
    elif name == "kubernetes":
        request.getfixturevalue("fake_kubelet")
        harness = pv.KubernetesHarness(tmp_path, request.getfixturevalue("k8s_cluster"))
    elif name == "nosana":
        harness = pv.NosanaHarness(tmp_path, request.getfixturevalue("nosana_sim"))
    else:
        raise AssertionError(f"no harness for {name}")
    try:
        yield harness
    finally:
        await harness.close()
