"""The autoscaling decision, without Ray or I/O: signals in, a desired replica count (and why) out.

One `Autoscaler` per deployment. `decide()` is called each reconcile round with the deployment's current
target and the load it sees; it returns the new target and a human reason. The rules:

- load = the larger of the proxy's view (ongoing + queued requests, summed over API replicas) and the
  engines' own view (running + waiting, from the heartbeats): requests that reach the engines without the
  proxy count too, and one request seen by both is not counted twice;
- wanted = ceil(load / target_ongoing_requests), within [min_replicas, max_replicas];
- up: after `upscale_delay_s` of sustained higher demand, at once when load >= panic_factor x the current
  capacity, and at once from zero when a request is waiting;
- down: only after `downscale_delay_s` of sustained lower demand, one replica per step (the executor drains
  the least-loaded replica); each step restarts the delay;
- to zero (min_replicas 0): only after `scale_to_zero_after_s` without any request.

The state that must survive a restart (when demand changed, the last request) is `state()`/`restore()`:
the DeploymentActor keeps it in Postgres with the deployment.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_UPSCALE_DELAY_S = 3.0
DEFAULT_DOWNSCALE_DELAY_S = 120.0
DEFAULT_PANIC_FACTOR = 2.0


@dataclass(frozen=True)
class AutoscalingPolicy:
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = DEFAULT_UPSCALE_DELAY_S
    downscale_delay_s: float = DEFAULT_DOWNSCALE_DELAY_S
    scale_to_zero_after_s: float | None = None
    panic_factor: float = DEFAULT_PANIC_FACTOR

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every rule the policy breaks; empty when valid."""
        out: list[tuple[str, str]] = []
        if self.min_replicas < 0:
            out.append(("min_replicas", "must be >= 0"))
        if self.max_replicas < 1:
            out.append(("max_replicas", "must be >= 1"))
        if self.min_replicas > self.max_replicas:
            out.append(("min_replicas", f"must be <= max_replicas ({self.max_replicas})"))
        if not (self.target_ongoing_requests > 0 and math.isfinite(self.target_ongoing_requests)):
            out.append(("target_ongoing_requests", "must be a finite number > 0"))
        for name in ("upscale_delay_s", "downscale_delay_s"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                out.append((name, "must be a finite number >= 0"))
        if self.scale_to_zero_after_s is not None and not (
            self.scale_to_zero_after_s > 0 and math.isfinite(self.scale_to_zero_after_s)
        ):
            out.append(("scale_to_zero_after_s", "must be a finite number > 0"))
        if self.min_replicas == 0 and self.scale_to_zero_after_s is None:
            out.append(("scale_to_zero_after_s", "required when min_replicas is 0 (how long idle before zero)"))
        if not (self.panic_factor > 1 and math.isfinite(self.panic_factor)):
            out.append(("panic_factor", "must be a finite number > 1"))
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AutoscalingPolicy:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class Signals:
    """The load of one deployment at one moment (no extra request per replica: all of it is pushed)."""

    proxy_ongoing: float = 0.0  # requests the proxy is forwarding now (summed over API replicas)
    proxy_queued: float = 0.0  # requests the proxy holds because no replica is routed (scale from zero)
    engine_running: float = 0.0  # the engines' own counts, from their /metrics via the heartbeats
    engine_waiting: float = 0.0
    last_request_at: float | None = None  # clock time of the newest request the proxy saw

    @property
    def load(self) -> float:
        return max(self.proxy_ongoing + self.proxy_queued, self.engine_running + self.engine_waiting)


@dataclass(frozen=True)
class Decision:
    desired: int
    previous: int
    reason: str
    at: float
    inputs: dict[str, Any]

    @property
    def changed(self) -> bool:
        return self.desired != self.previous

    def to_dict(self) -> dict[str, Any]:
        return {"desired": self.desired, "previous": self.previous, "reason": self.reason, "at": self.at, **self.inputs}


class Autoscaler:
    def __init__(self, policy: AutoscalingPolicy) -> None:
        self.policy = policy
        self._up_since: float | None = None  # since when demand has been above the current target
        self._down_since: float | None = None  # since when demand has been below it
        self._last_request_at: float | None = None
        self.last: Decision | None = None

    # ---------------------------------------------------------------- state that survives a restart
    def state(self) -> dict[str, Any]:
        return {"up_since": self._up_since, "down_since": self._down_since, "last_request_at": self._last_request_at}

    def restore(self, state: dict[str, Any] | None, now: float) -> None:
        """Take back what `state()` saved. Times are clock values of the same clock (wall time in the actor);
        a time in the future (clock moved) is clamped to now."""
        state = state or {}

        def _t(key: str) -> float | None:
            v = state.get(key)
            return min(float(v), now) if isinstance(v, int | float) and math.isfinite(v) else None

        self._up_since = _t("up_since")
        self._down_since = _t("down_since")
        self._last_request_at = _t("last_request_at")

    def set_policy(self, policy: AutoscalingPolicy) -> None:
        self.policy = policy

    # ---------------------------------------------------------------- the decision
    def wanted(self, load: float) -> int:
        p = self.policy
        return max(p.min_replicas, min(p.max_replicas, math.ceil(load / p.target_ongoing_requests - 1e-9)))

    def decide(self, current: int, signals: Signals, now: float) -> Decision:
        p = self.policy
        if signals.last_request_at is not None:
            self._last_request_at = max(self._last_request_at or 0.0, signals.last_request_at)
        if signals.load > 0 or self._last_request_at is None:
            # a load is a request now; with no request ever seen, idleness counts from the first look
            self._last_request_at = max(self._last_request_at or 0.0, now)
        load = signals.load
        wanted = self.wanted(load)
        idle_s = None if self._last_request_at is None else now - self._last_request_at
        inputs = {
            "load": round(load, 3),
            "proxy_ongoing": signals.proxy_ongoing,
            "proxy_queued": signals.proxy_queued,
            "engine_running": signals.engine_running,
            "engine_waiting": signals.engine_waiting,
            "wanted": wanted,
            "idle_s": None if idle_s is None else round(idle_s, 3),
        }

        def out(desired: int, reason: str) -> Decision:
            self.last = Decision(desired, current, reason, now, inputs)
            return self.last

        # outside the bounds (the policy changed): move there at once
        if current > p.max_replicas:
            self._up_since = self._down_since = None
            return out(p.max_replicas, f"above max_replicas {p.max_replicas}")
        if current < p.min_replicas:
            self._up_since = self._down_since = None
            return out(p.min_replicas, f"below min_replicas {p.min_replicas}")

        if current == 0:
            self._down_since = None
            if load > 0:
                self._up_since = None
                return out(max(1, wanted), f"request waiting at zero replicas (load {load:g})")
            return out(0, "idle at zero replicas")

        # at least one replica stays until the deployment has been idle long enough for zero
        floor = max(p.min_replicas, 1)
        if p.min_replicas == 0 and p.scale_to_zero_after_s is not None and load == 0:
            if idle_s is not None and idle_s >= p.scale_to_zero_after_s:
                floor = 0
        wanted = max(wanted, floor)
        inputs["wanted"] = wanted

        if wanted > current:
            self._down_since = None
            capacity = current * p.target_ongoing_requests
            if load >= p.panic_factor * capacity:
                self._up_since = None
                return out(wanted, f"panic: load {load:g} >= {p.panic_factor:g}x capacity {capacity:g}")
            if self._up_since is None:
                self._up_since = now
            held = now - self._up_since
            if held >= p.upscale_delay_s:
                self._up_since = None
                return out(wanted, f"load {load:g} above capacity {capacity:g} for {held:.1f} s")
            return out(current, f"load {load:g} above capacity {capacity:g} for {held:.1f} s of {p.upscale_delay_s:g}")

        if wanted < current:
            self._up_since = None
            if wanted == 0 and current == 1:
                self._down_since = None
                return out(0, f"no request for {idle_s if idle_s is not None else 0:.0f} s: scale to zero")
            if self._down_since is None:
                self._down_since = now
            held = now - self._down_since
            if held >= p.downscale_delay_s:
                self._down_since = now  # one step; the next one waits the delay again
                return out(current - 1, f"load {load:g} needs {wanted} for {held:.1f} s: one step down")
            return out(current, f"load {load:g} needs {wanted}, waiting {held:.1f} s of {p.downscale_delay_s:g}")

        self._up_since = self._down_since = None
        return out(current, f"load {load:g} fits {current} replica(s)")
