"""Session fixtures shared by tests/integration and tests/conformance (tests/conftest.py imports them, so
each exists once per pytest session: one control plane, one Kubernetes control plane)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.fake_kubelet import fake_kubelet
from tests.support.k8s_cluster import k8s_cluster

if TYPE_CHECKING:
    from controller.boot import ControlPlane
    from controller.client import Client

__all__ = ["api", "control_plane", "fake_kubelet", "k8s_cluster", "provider_env"]


@pytest.fixture(scope="session")
def provider_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Environment the Ray workers inherit, so it is set before Ray starts: the SkyPilot provider runs on
    fixture catalogs (SKY_RUNTIME_DIR) with the fake client, whose "VMs" live under the data dir; the instant
    test provider (tests/support/instant.py) is registered for the fault suite."""
    from tests.support import instant, skypilot_catalog

    mp = pytest.MonkeyPatch()
    skypilot_catalog.install(tmp_path_factory.mktemp("sky"))
    mp.setenv("INFERIA_SKYPILOT_CLIENT", "tests.support.skypilot_fake:factory")
    mp.setenv("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")
    mp.setenv("INFERIA_ADAPTERS", instant.ENV_ADAPTERS)
    try:
        yield
    finally:
        mp.undo()


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory, provider_env: None) -> Iterator[ControlPlane]:
    """One real control plane for the session: embedded Postgres + Redis, local Ray, Serve."""
    from tests.support import controlplane as cpl

    data_dir: Path = tmp_path_factory.mktemp("inferia")
    cp = cpl.start(data_dir, interval_s=1.0)
    try:
        yield cp
    finally:
        cp.stop()
        cpl.kill_all(cpl.processes_under(data_dir))


@pytest.fixture()
def api(control_plane: ControlPlane) -> Iterator[Client]:
    from tests.support import controlplane as cpl

    with cpl.client(control_plane) as c:
        yield c
