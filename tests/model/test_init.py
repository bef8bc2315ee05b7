"""Training-from-scratch initialisation matches the official code (issue 12, hmhi-architecture.md §9)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from model import create_model


@pytest.fixture(scope="module")
def fresh_net():
    torch.manual_seed(0)
    return create_model("hmhi_mit_b0", decoder_width=32, readout_ffn_dim=64)


def test_plam_convs_are_kaiming_uniform_a0_with_zero_bias(fresh_net):
    convs = {name: m for name, m in fresh_net.plam.named_modules() if isinstance(m, nn.Conv2d)}
    assert any(m.kernel_size == (3, 3) for m in convs.values()), "CBAM 3x3 convs must be covered"
    assert len(convs) == 8  # down (7x7 grouped, 1x1), CBAM (3x3, 1x1, 1x1, 3x3, 3x3), fuse 1x1
    for name, conv in convs.items():
        weight = conv.weight.detach().double()
        fan_in = weight[0].numel()
        bound = math.sqrt(6.0 / fan_in)  # kaiming_uniform_(a=0): gain sqrt(2), bound gain * sqrt(3 / fan_in)
        assert torch.count_nonzero(conv.bias) == 0, name
        assert weight.abs().max() <= bound + 1e-7, name
        # Uniform(-b, b) has E[w^2] = b^2 / 3 = 2 / fan_in; the sample mean of w^2 has relative std
        # sqrt(0.8 / n). PyTorch's default (a=sqrt(5)) would give 1/3 of 1 / fan_in, N(0, 0.01) far less.
        n = weight.numel()
        ratio = float(weight.pow(2).mean()) / (2.0 / fan_in)
        assert abs(ratio - 1.0) <= 5 * math.sqrt(0.8 / n), (name, ratio, n)
        assert float(weight.abs().max()) >= bound * (1 - 10.0 / n), name  # the range is used up to the bound


def test_memory_encoder_fusers_start_as_copies_of_one_block(fresh_net):
    for bank in (fresh_net.pixel_memory, fresh_net.semantic_memory):
        first, second = bank.encoder.fuser
        a, b = first.state_dict(), second.state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
            assert a[key].data_ptr() != b[key].data_ptr(), f"{key}: the blocks share storage"
        # Copies, not one block twice: training one leaves the other alone.
        with torch.no_grad():
            first.dwconv.weight.add_(1.0)
        assert not torch.equal(first.dwconv.weight, second.dwconv.weight)
    # Different memories are not copies of each other (each built its own block).
    assert not torch.equal(
        fresh_net.pixel_memory.encoder.fuser[0].pwconv1.weight[:1, :32],
        fresh_net.semantic_memory.encoder.fuser[0].pwconv1.weight[:1, :32],
    )
