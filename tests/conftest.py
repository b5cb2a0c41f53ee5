from __future__ import annotations

import os

# Ray: no usage stats, no auth, no dashboard (set before anything imports ray)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# the control planes the tests start run without the Ray dashboard (a test of the dashboard turns it on)
os.environ.setdefault("INFERIA_DASHBOARD", "false")

# the session fixtures of the integration and conformance suites, defined once (tests/support/session_fixtures.py)
from tests.support.session_fixtures import (
    api,
    control_plane,
    fake_kubelet,
    k8s_cluster,
    provider_env,
)

__all__ = ["api", "control_plane", "fake_kubelet", "k8s_cluster", "provider_env"]
