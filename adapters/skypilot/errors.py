"""SkyPilot's exceptions translated into TemporaryProviderError / PermanentProviderError, deliberately."""

from __future__ import annotations

import asyncio
import re

from sky import exceptions as sx

from adapters.base import PermanentProviderError, ProviderError, TemporaryProviderError

SKY_CHECK_HINT = "run `sky check` on the SkyPilot API server's host to enable a cloud and check its credentials"


class CapacityError(TemporaryProviderError):
    """No capacity or quota at the chosen location: try the next candidate, then retry later."""


# permanent: configuration, credentials, policy - retrying cannot help
_NO_CLOUD = (sx.NoCloudAccessError, sx.InvalidCloudCredentials, sx.CloudUserIdentityError, sx.InvalidCloudConfigs)
_PERMANENT = (
    sx.InvalidSkyPilotConfigError,
    sx.ResourcesMismatchError,
    sx.NotSupportedError,
    sx.ProvisionUnsupportedError,
    sx.InvalidClusterNameError,
    sx.UserRequestRejectedByPolicy,
    sx.PermissionDeniedError,
    sx.ApiServerAuthenticationError,
    sx.APIVersionMismatchError,
    sx.ClusterOwnerIdentityMismatchError,
    sx.RequestCancelled,
)
# temporary: the server, the network or the cloud may come back
_TEMPORARY = (
    sx.ApiServerConnectionError,
    sx.ServerTemporarilyUnavailableError,
    sx.NetworkError,
    sx.ClusterStatusFetchingError,
    sx.FetchClusterInfoError,
    sx.ClusterNotUpError,
    sx.ClusterSetUpError,
    sx.CommandError,
    sx.ConcurrentWorkerExhaustedError,
    sx.RequestInterruptedError,
    ConnectionError,
    asyncio.TimeoutError,
    TimeoutError,
)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip() or type(exc).__name__
    return text.splitlines()[0][:500]


def translate(exc: BaseException, what: str) -> ProviderError:
    """Our error for a SkyPilot exception raised while doing `what`."""
    if isinstance(exc, ProviderError):
        return exc
    msg = f"{what}: {_first_line(exc)}"
    if isinstance(exc, _NO_CLOUD):
        return PermanentProviderError(f"{msg} ({SKY_CHECK_HINT})")
    if isinstance(exc, sx.ProvisionPrechecksError):
        reasons = "; ".join(_first_line(r) for r in getattr(exc, "reasons", []) or [])
        return PermanentProviderError(f"{what}: provisioning pre-checks failed: {reasons or msg} ({SKY_CHECK_HINT})")
    if isinstance(exc, sx.ResourcesUnavailableError):
        if getattr(exc, "no_failover", False):
            return PermanentProviderError(f"{msg} (SkyPilot says retrying elsewhere cannot help)")
        return CapacityError(msg)
    if isinstance(exc, _PERMANENT):
        return PermanentProviderError(msg)
    if isinstance(exc, _TEMPORARY):
        return TemporaryProviderError(msg)
    if isinstance(exc, ValueError):  # bad task/resources spec (SkyPilot validates with ValueError)
        return PermanentProviderError(msg)
    # unknown: retry with backoff (bounded by the pool's retry policy) rather than fail for good
    return TemporaryProviderError(f"{msg} ({type(exc).__name__})")


def is_gone(exc: BaseException) -> bool:
    """The cluster does not exist (down of a missing cluster is success)."""
    return isinstance(exc, sx.ClusterDoesNotExist)
