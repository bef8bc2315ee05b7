"""Loopback ports for the servers of a local cluster, picked so that no two of them collide.

``bind(0)`` then ``close()`` is the usual way to find a free port, and it fails in two ways when a cluster needs a
dozen of them: the kernel may hand the same port out twice in a row (Ray then refuses to start: "trying to use a
port number ... that is used by other components"), and a port from the ephemeral range can become some outgoing
connection's source port before the server binds it. A `PortPicker` never hands out a port twice and takes its
ports from below the kernel's ephemeral range and above Ray's worker ports (10002-19999 by default), where no
outgoing connection and no Ray worker lands.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"
LOWEST_PORT = 20000
"""Above Ray's default worker port range (10002-19999), which its workers bind one by one."""
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_USABLE_SPAN = 1000
"""Fewer ports than this between LOWEST_PORT and the ephemeral range: pick from the kernel's own instead."""


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's range for ``bind(0)`` and outgoing connections; Linux's default where it cannot be read."""
    try:
        low, high = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a TCP server could bind ``host:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class PortPicker:
    """Distinct free TCP ports on loopback, one per `take`, for the servers of one cluster or test."""

    def __init__(self, rng: random.Random | None = None, ephemeral: tuple[int, int] | None = None):
        self._rng = rng or random.Random()
        self._given: set[int] = set()
        low = (ephemeral or ephemeral_range())[0]
        self._span = (LOWEST_PORT, low - 1) if low - 1 - LOWEST_PORT >= _USABLE_SPAN else None

    def take(self) -> int:
        """A port that is free now and that this picker has not handed out before."""
        for _ in range(1000):
            port = self._rng.randint(*self._span) if self._span else self._kernel_pick()
            if port not in self._given and is_free(port):
                self._given.add(port)
                return port
        raise RuntimeError(f"no free TCP port on {LOOPBACK} after 1000 tries ({len(self._given)} handed out)")

    @staticmethod
    def _kernel_pick() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((LOOPBACK, 0))
            return int(probe.getsockname()[1])


_shared = PortPicker()


def free_port() -> int:
    """A free loopback port that no earlier call in this process returned (one picker per process)."""
    return _shared.take()
