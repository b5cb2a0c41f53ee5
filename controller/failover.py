"""Several API addresses for one control plane (INFERIA_API_URLS): the order a client tries them in, and when a
request moves on to the next one.

A request goes to the address that answered last. It moves on to the next address
- when the connection could not be made (nothing was sent): any request;
- for an idempotent request (GET, HEAD, OPTIONS, PUT, DELETE, and the heartbeat POST, whose seq makes a copy
  harmless) also when the connection broke before the answer (an API replica killed mid-request) and on
  502/503/504 (no live replica behind that address).
A 4xx, any other answer, and a timeout waiting for an answer end the request there. With one address an
idempotent request is tried twice: the replicas behind one data port share it (SO_REUSEPORT), so a new
connection reaches a live one when the pooled connection's replica is gone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import httpx

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
IDEMPOTENT_POSTS = frozenset({"/inventory/heartbeat", "/inventory/heartbeats"})
FAILOVER_STATUSES = frozenset({502, 503, 504})


def split_urls(base_url: str | Sequence[str]) -> list[str]:
    """ "http://a:8001,http://b:8001" or a list of URLs -> the URLs, without trailing slashes."""
    parts = base_url.split(",") if isinstance(base_url, str) else list(base_url)
    urls = [u.strip().rstrip("/") for u in parts if u and u.strip()]
    if not urls:
        raise ValueError("no API URL given")
    return urls


def idempotent(method: str, path: str) -> bool:
    return method.upper() in IDEMPOTENT_METHODS or (method.upper() == "POST" and path in IDEMPOTENT_POSTS)


def retry_elsewhere(exc: httpx.TransportError, idempotent_request: bool) -> bool:
    """May this failure be retried at the next address?"""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return True  # nothing reached the server
    if isinstance(exc, httpx.TimeoutException):
        return False  # the server may still be working on it: waiting again elsewhere doubles the wait
    return idempotent_request


@dataclass
class Addresses:
    urls: list[str]
    at: int = 0  # the address that answered last
    moves: int = field(default=0)  # how many times a request moved on (for tests and logs)

    @property
    def current(self) -> str:
        return self.urls[self.at]

    def attempts(self, idempotent_request: bool) -> Iterator[int]:
        """Address indexes to try, starting at the current one."""
        n = len(self.urls)
        tries = max(n, 2) if idempotent_request else n
        for i in range(tries):
            yield (self.at + i) % n

    def answered(self, index: int) -> None:
        if index != self.at:
            self.at = index
            self.moves += 1
