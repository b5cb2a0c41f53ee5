"""The sidecar's HTTP API over httpx, with deliberate timeouts and retries.

Every call the adapter makes is idempotent on the sidecar side (launch is keyed by node id, stop of a
stopped job is a no-op), so a call that timed out is simply retried; a launch that timed out on every
try is found by node id on the pool's next call. Errors become Temporary/PermanentProviderError.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from adapters.base import PermanentProviderError, TemporaryProviderError

log = logging.getLogger(__name__)

_PERMANENT = {400: "rejected", 401: "refused", 402: "insufficient funds", 403: "refused", 409: "conflict"}


class NotFound(Exception):
    """The sidecar does not know the job or node."""


class SidecarClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 10.0,
        launch_timeout_s: float = 60.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.launch_timeout_s = launch_timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"x-internal-api-key": api_key},
            timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
            transport=transport,
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """JSON body of a 2xx answer; NotFound on 404; retries transport errors and 5xx."""
        last: str = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                r = await self._http.request(
                    method, path, json=json, params=params, timeout=timeout_s or self.timeout_s
                )
            except httpx.TimeoutException:
                last = f"the sidecar did not answer {method} {path} within {timeout_s or self.timeout_s:g}s"
                continue
            except httpx.HTTPError as exc:
                last = f"the sidecar at {self.base_url} is unreachable: {type(exc).__name__}"
                continue
            if r.status_code == 404:
                raise NotFound(path)
            if r.status_code in _PERMANENT:
                raise PermanentProviderError(
                    f"nosana sidecar {_PERMANENT[r.status_code]} {method} {path}: {_message(r)}"
                )
            if r.status_code >= 400:
                last = f"nosana sidecar answered {r.status_code} to {method} {path}: {_message(r)}"
                if r.status_code < 500:
                    raise PermanentProviderError(last)
                continue
            try:
                body = r.json()
            except ValueError:
                body = {}
            if not isinstance(body, dict):
                raise TemporaryProviderError(f"nosana sidecar sent a malformed answer to {method} {path}")
            body["_status"] = r.status_code
            return body
        log.warning("%s", last)
        raise TemporaryProviderError(last)


def _message(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:200]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)[:300]
    return str(body)[:200]
