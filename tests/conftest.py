from __future__ import annotations

import os

# Ray: no usage stats, no auth, no dashboard (set before anything imports ray)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
