"""controller.services.free_port: ports for servers that bind them a moment later come from outside the
kernel's ephemeral range (where an outgoing connection could take them first) and above Ray's worker ports."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from controller import services


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_ports_are_free_and_outside_the_ephemeral_range() -> None:
    low = services._ephemeral_low()
    ports = [services.free_port() for _ in range(20)]
    for port in ports:
        assert services.PICK_LOW <= port < low, (port, low)
        assert _bindable(port)
    assert len(set(ports)) > 1  # random, not one fixed port


class _Picks:
    def __init__(self, ports: list[int]) -> None:
        self._ports: Iterator[int] = iter(ports)

    def randint(self, low: int, high: int) -> int:
        return next(self._ports)


def test_a_port_in_use_is_skipped_and_a_small_range_falls_back_to_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        taken = held.getsockname()[1]
        other = services.free_port()
        monkeypatch.setattr(services.random, "SystemRandom", lambda: _Picks([taken, other]))
        assert services.free_port() == other  # the held port was tried first and skipped

        monkeypatch.setattr(services, "_ephemeral_low", lambda: services.PICK_LOW + 10)
        port = services.free_port()  # no room below the ephemeral range: the kernel picks
        assert port != taken and _bindable(port)
