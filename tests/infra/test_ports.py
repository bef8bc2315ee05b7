"""infra/local/ports.py: the ports a local cluster's servers get never collide with each other or with the kernel's."""

from __future__ import annotations

import random
import socket

from infra.local.ports import LOWEST_PORT, PortPicker, ephemeral_range, free_port, is_free


class RepeatingRng(random.Random):
    """Returns the given ports in turn, then random ones: a kernel that hands the same port out twice."""

    def __init__(self, ports: list[int]):
        super().__init__(0)
        self._ports = list(ports)

    def randint(self, a: int, b: int) -> int:
        return self._ports.pop(0) if self._ports else super().randint(a, b)


def test_a_picker_never_hands_out_a_port_twice_and_stays_below_the_ephemeral_range():
    low, _ = ephemeral_range()
    picker = PortPicker()
    ports = [picker.take() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    if low - LOWEST_PORT > 1000:
        assert all(LOWEST_PORT <= port < low for port in ports)
    assert all(is_free(port) for port in ports)


def test_a_port_drawn_again_or_in_use_is_skipped():
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("127.0.0.1", 0))
    busy_port = busy.getsockname()[1]
    try:
        first = PortPicker(ephemeral=(30000, 60999)).take()
        # The draws: a port just handed out, then one some server holds, then any.
        picker = PortPicker(rng=RepeatingRng([first, first, busy_port, busy_port]), ephemeral=(30000, 60999))
        assert picker.take() == first
        second = picker.take()
        assert second not in (first, busy_port)
        assert is_free(second)
    finally:
        busy.close()


def test_where_the_ephemeral_range_leaves_no_room_the_kernel_picks_distinct_ports():
    picker = PortPicker(ephemeral=(1024, 65535))
    ports = [picker.take() for _ in range(50)]
    assert len(set(ports)) == 50


def test_the_ephemeral_range_is_read_from_the_kernel_or_defaults(tmp_path):
    custom = tmp_path / "range"
    custom.write_text("40000\t50000\n")
    assert ephemeral_range(custom) == (40000, 50000)
    assert ephemeral_range(tmp_path / "missing") == (32768, 60999)
    custom.write_text("garbage")
    assert ephemeral_range(custom) == (32768, 60999)


def test_free_port_differs_on_every_call_in_a_process():
    ports = {free_port() for _ in range(100)}
    assert len(ports) == 100


def test_is_free_says_no_for_a_bound_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        assert not is_free(held.getsockname()[1])
