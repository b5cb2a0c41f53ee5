"""The chaos soak of bench/soak.py at a small size (issue 10): a seeded run of scaling, provider faults
(the instant provider's fault plan), killed instances, agents, engines and actors and one crash + restart
of the whole control plane, on the instant and the real local provider. Nothing may leak: every invariant
of tests/support/invariants.py holds at the end, and nothing is left after `down`."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import Soak, ok, report


def test_small_chaos_soak_leaks_nothing(tmp_path_factory: pytest.TempPathFactory) -> None:
    data_dir: Path = tmp_path_factory.mktemp("soak")
    soak = Soak(seed=7, seconds=15, restarts=1, instant_max=4, local_max=1)
    figures = soak.run(data_dir)
    report(figures)
    detail = "\n".join(soak.log[-40:])
    assert figures["operations"] >= 5, detail
    assert figures["faults_injected"] > 0, figures
    assert figures.get("converged"), f"{figures.get('not_converged')}\n{detail}"
    assert figures["leaks"] == 0, f"{figures['violations']}\n{detail}"
    assert not figures["left_after_down"], figures["left_after_down"]
    assert figures["instances_after_down"] == 0
    assert ok(figures)
