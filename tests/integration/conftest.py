from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.boot import ControlPlane
from controller.client import Client
from tests.support import controlplane as cpl


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """One real control plane for the integration session: embedded Postgres + Redis, local Ray, Serve."""
    data_dir: Path = tmp_path_factory.mktemp("inferia")
    cp = cpl.start(data_dir, interval_s=1.0)
    try:
        yield cp
    finally:
        cp.stop()
        cpl.kill_all(cpl.processes_under(data_dir))


@pytest.fixture()
def api(control_plane: ControlPlane) -> Iterator[Client]:
    with cpl.client(control_plane) as c:
        yield c
