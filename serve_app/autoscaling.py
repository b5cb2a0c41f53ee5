"""The autoscaling policy at the API's edge: merge what a request gives with defaults (POST) or the current
policy (PATCH), check it with AutoscalingPolicy.problems(), and answer 422 naming the field."""

from __future__ import annotations

from typing import Any

from actors.autoscaler import AutoscalingPolicy
from serve_app.errors import ApiError
from serve_app.schemas import AutoscalingIn

# a null in these fields means "no value" (scale to zero off); in the others "the default"
NULLABLE = frozenset({"scale_to_zero_after_s"})


def merged_policy(given: AutoscalingIn, current: dict[str, Any] | None = None) -> AutoscalingPolicy:
    """The policy a request asks for: its fields over `current` (PATCH) or the defaults (POST); 422 when the
    result breaks a rule (min <= max, zero only with scale_to_zero_after_s, ...)."""
    defaults = AutoscalingPolicy().to_dict()
    base = {**defaults, **(current or {})}
    for key, value in given.given().items():
        base[key] = value if value is not None or key in NULLABLE else defaults[key]
    policy = AutoscalingPolicy.from_dict(base)
    problems = policy.problems()
    if problems:
        field, message = problems[0]
        raise ApiError(422, "invalid_request", f"autoscaling.{field}: {message}", f"autoscaling.{field}")
    return policy


def check_target(replicas: int, policy: AutoscalingPolicy) -> int:
    """A replica count given with (or under) a policy must lie within its bounds."""
    if not policy.min_replicas <= replicas <= policy.max_replicas:
        raise ApiError(
            422,
            "invalid_request",
            f"replicas: must be within autoscaling min_replicas..max_replicas "
            f"({policy.min_replicas}..{policy.max_replicas})",
            "replicas",
        )
    return replicas


def clamp(replicas: int, policy: AutoscalingPolicy) -> int:
    return max(policy.min_replicas, min(policy.max_replicas, replicas))
