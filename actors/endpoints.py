"""Which engine endpoint a heartbeat may set: the rule that keeps heartbeats from redirecting traffic.

A node's endpoint is what its provider reported at provisioning (recorded by its pool). A heartbeat sent to
the API (a node agent, the Nosana sidecar) may change it only when the provider's endpoints move by design
(`Capabilities.endpoint_moves`: a Nosana redeploy gets the new job's URL), and then only to an http(s) URL
that the provider's rules accept (`ProviderAdapter.accepts_endpoint`), never to one of the control plane's
own host:ports, and never to a loopback, link-local or unspecified address unless the provider is `local`
(or the host is listed in INFERIA_TRUSTED_ENDPOINT_HOSTS, for simulated markets on one machine). For any
other provider a heartbeat may repeat the recorded endpoint; a different one is refused (409, an event) and
a node without a recorded endpoint gets none from its heartbeats. Health reported by the provider itself
(a pool relaying its adapter's watch) is provider truth and is not checked here.

Host names are not resolved: a name is judged by the provider's rule (Nosana: its service domain).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

TRUSTED_HOSTS_ENV = "INFERIA_TRUSTED_ENDPOINT_HOSTS"
LOCAL_PROVIDER = "local"
IGNORE = ""  # check(): leave the heartbeat's endpoint unused, accept the rest
LOOPBACK_NAMES = ("localhost", "localhost.", "ip6-localhost", "ip6-loopback")


@dataclass(frozen=True)
class ProviderRule:
    moves: bool
    accepts: Callable[[str], bool]


def _provider_rule(provider: str) -> ProviderRule:
    """The adapter class's capability flag and URL rule (an unknown provider's endpoints never move)."""
    from adapters.registry import get_adapter_class

    try:
        cls = get_adapter_class(provider)
    except Exception:
        return ProviderRule(False, lambda _url: False)
    return ProviderRule(bool(getattr(cls.capabilities, "endpoint_moves", False)), cls.accepts_endpoint)


def _host_port(url: str) -> tuple[str, int | None] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    default = 443 if parts.scheme == "https" else 80
    return parts.hostname.lower(), port if port is not None else default


def _is_local_address(host: str) -> bool:
    """Loopback, link-local or unspecified (0.0.0.0, ::): addresses of this machine or its local link."""
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified


def own_addresses(urls: list[str | None]) -> set[tuple[str, int]]:
    """host:port of the control plane's own services (API, data port, PostgreSQL, Redis)."""
    out: set[tuple[str, int]] = set()
    for url in urls:
        if not url:
            continue
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            continue
        if parts.hostname and port:
            out.add((parts.hostname.lower(), port))
    return out


@dataclass
class EndpointRule:
    """Judges endpoint changes carried by heartbeats; refused changes are kept for the events table."""

    own: set[tuple[str, int]] = field(default_factory=set)
    trusted_hosts: frozenset[str] = frozenset()
    provider_rule: Callable[[str], ProviderRule] = _provider_rule
    refused: list[dict[str, Any]] = field(default_factory=list)
    max_pending: int = 1000

    @classmethod
    def for_runtime(cls, cfg: Any) -> EndpointRule:
        """From a RuntimeConfig: its API, data, PostgreSQL and Redis addresses are the control plane's own."""
        own = own_addresses([cfg.public_url, cfg.data_url, *cfg.api_urls.split(","), cfg.dsn, cfg.redis_url])
        if cfg.data_port:
            own.add((str(cfg.api_host).lower(), int(cfg.data_port)))
        hosts = frozenset(h.strip().lower() for h in os.environ.get(TRUSTED_HOSTS_ENV, "").split(",") if h.strip())
        return cls(own=own, trusted_hosts=hosts)

    def _is_own(self, host: str, port: int | None) -> bool:
        if port is None:
            return False
        for own_host, own_port in self.own:
            if own_port != port:
                continue
            if own_host == host or (_is_local_address(own_host) and _is_local_address(host)):
                return True
        return False

    def check(self, provider: str, current: str | None, new: str) -> str | None:
        """None when the change is allowed, IGNORE when the heartbeat's endpoint is to be left unused (a node
        whose provider reports endpoints at provisioning, heartbeating before its pool recorded it), else why
        it is refused (no secret in it)."""
        hp = _host_port(new)
        if hp is None:
            return "endpoint: must be an http(s) URL with a host"
        host, port = hp
        if self._is_own(host, port):
            return f"endpoint: {host}:{port} is one of the control plane's own addresses"
        rule = self.provider_rule(provider)
        if not rule.moves:
            if current is None:
                return IGNORE
            return f"endpoint: a {provider} node's endpoint is fixed at provisioning ({current})"
        if host in self.trusted_hosts:  # the operator's allow-list (INFERIA_TRUSTED_ENDPOINT_HOSTS)
            return None
        if provider != LOCAL_PROVIDER and _is_local_address(host):
            return f"endpoint: {host} is a loopback or link-local address"
        if not rule.accepts(new):
            return f"endpoint: the {provider} provider does not accept {host}"
        return None

    def judge(self, entry: Any, hb: Any) -> str | None:
        """The hook of InventoryCore.heartbeat for a heartbeat sent to the API: None to go on (its endpoint
        cleared when it is to be left unused), else why it is refused (recorded for an event)."""
        if not hb.endpoint or hb.endpoint == entry.endpoint:
            return None
        why = self.check(entry.provider, entry.endpoint, hb.endpoint)
        if why == IGNORE:
            hb.endpoint = None
            return None
        if why is not None:
            self.refuse(entry.id, entry.provider, entry.endpoint, hb.endpoint, why)
        return why

    def refuse(self, node_id: str, provider: str, current: str | None, new: str, reason: str) -> None:
        if len(self.refused) < self.max_pending:
            self.refused.append(
                {"node_id": node_id, "provider": provider, "from": current, "to": new, "reason": reason}
            )
        log.warning("heartbeat of node %s refused: %s", node_id, reason)

    def take_refused(self) -> list[dict[str, Any]]:
        out, self.refused = self.refused, []
        return out
