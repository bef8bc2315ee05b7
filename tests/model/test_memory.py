"""Memory building blocks: chunked top-k attention vs the official dense form, RoPE and sine codes."""

from __future__ import annotations

import math

import pytest
import torch

from model.memory import (
    apply_rope,
    dense_topk_attention,
    rope_tables,
    sine_position_code,
    topk_cross_attention,
)


@pytest.mark.parametrize("chunk_elements", [1 << 30, 3 * 200])  # one chunk / many uneven chunks
def test_chunked_topk_equals_dense(chunk_elements):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 16, generator=g) for n in (37, 200, 200))
    got = topk_cross_attention(q, k, v, topk=50, chunk_elements=chunk_elements)
    torch.testing.assert_close(got, dense_topk_attention(q, k, v, topk=50), atol=1e-6, rtol=1e-5)
    # top-k matters: dense softmax over all keys differs
    full = torch.softmax(q @ k.transpose(1, 2) / 4.0, dim=-1) @ v
    assert (got - full).abs().max() > 1e-3


def test_topk_with_invalid_keys_and_fewer_valid_than_k():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, n, 8, generator=g) for n in (10, 120, 120))
    valid = torch.ones(2, 120, dtype=torch.bool)
    valid[0, 40:] = False  # element 0: only 40 valid keys (< 50): all of them are used
    valid[1, :60] = False
    got = topk_cross_attention(q, k, v, topk=50, key_valid=valid, chunk_elements=64)
    ref0 = torch.softmax(q[:1] @ k[:1, :40].transpose(1, 2) / math.sqrt(8), dim=-1) @ v[:1, :40]
    torch.testing.assert_close(got[:1], ref0, atol=1e-6, rtol=1e-5)
    ref1 = dense_topk_attention(q[1:], k[1:, 60:], v[1:, 60:], topk=50)
    torch.testing.assert_close(got[1:], ref1, atol=1e-6, rtol=1e-5)


def test_topk_gradients_match_dense():
    g = torch.Generator().manual_seed(2)
    tensors = [torch.randn(1, n, 8, generator=g, requires_grad=True) for n in (12, 90, 90)]
    topk_cross_attention(*tensors, topk=50, chunk_elements=200).square().sum().backward()
    grads = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    dense_topk_attention(*tensors, topk=50).square().sum().backward()
    for got, t in zip(grads, tensors):
        torch.testing.assert_close(got, t.grad, atol=1e-5, rtol=1e-4)


def test_rope_is_relative_and_tiles_over_memory_frames():
    dim, h, w = 16, 4, 4
    tables = rope_tables(dim, h, w, torch.device("cpu"))
    g = torch.Generator().manual_seed(3)
    q = torch.randn(dim, generator=g).expand(1, h * w, dim)
    k = torch.randn(dim, generator=g).expand(1, h * w, dim)
    rq, rk = apply_rope(q, tables), apply_rope(k, tables)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))  # a rotation
    scores = (rq @ rk.transpose(1, 2))[0]
    # the score depends on the 2-D offset only: (0,0)->(1,2) equals (1,1)->(2,3)
    torch.testing.assert_close(scores[0 * w + 0, 1 * w + 2], scores[1 * w + 1, 2 * w + 3])
    two_frames = apply_rope(torch.cat([k, k], dim=1), tables)  # memory keys: the table is tiled per frame
    torch.testing.assert_close(two_frames[:, h * w :], rk)
    # pair 0 rotates by x * 1 (frequency 10000^0), the first dim/4 pairs follow x, the others y
    cos, sin = tables
    assert torch.allclose(cos[1, 0], torch.tensor(math.cos(1.0))) and torch.allclose(
        sin[w, 0], torch.tensor(0.0)
    )
    assert torch.allclose(sin[w, dim // 4], torch.tensor(math.sin(1.0)))


def test_sine_code_matches_formula():
    code = sine_position_code(8, 3, 5, torch.device("cpu"))  # (15, 8): y block (4 ch) then x block
    row, col = 2, 4
    y = (row + 1) / (3 + 1e-6) * 2 * math.pi
    x = (col + 1) / (5 + 1e-6) * 2 * math.pi
    dim_t = [10000 ** (2 * (j // 2) / 4) for j in range(4)]
    expected = [
        math.sin(y / dim_t[0]),
        math.cos(y / dim_t[1]),
        math.sin(y / dim_t[2]),
        math.cos(y / dim_t[3]),
        math.sin(x / dim_t[0]),
        math.cos(x / dim_t[1]),
        math.sin(x / dim_t[2]),
        math.cos(x / dim_t[3]),
    ]
    torch.testing.assert_close(code[row * 5 + col], torch.tensor(expected), atol=1e-6, rtol=0)


def test_bf16_topk_selects_and_weighs_in_fp32():
    """Under bf16 autocast the top-k choice and softmax are those of fp32 logits of the (bf16) q and k."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, n, 64, generator=g).bfloat16() for n in (300, 2000, 2000))
    valid = torch.ones(2, 2000, dtype=torch.bool)
    valid[1, :1500] = False  # invalid keys must not come back through the fp32 re-scoring
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = topk_cross_attention(q, k, v, topk=50, key_valid=valid, chunk_elements=1 << 16)
    assert got.dtype == torch.bfloat16
    exact = dense_topk_attention(q.float(), k.float(), v.float(), topk=50, key_valid=valid)
    # Only the final rounding of the output to bf16 separates them (|out| < ~1, bf16 spacing <= 2^-8).
    assert (got.float() - exact).abs().max() <= 2**-8
    # Control: selecting among bf16-rounded logits changes some queries' outputs by far more.
    logits = (q @ k.transpose(1, 2) * 64**-0.5).masked_fill(~valid[:, None], float("-inf"))  # bf16
    index = logits.topk(50, dim=-1).indices
    masked = torch.full_like(logits, float("-inf")).scatter(-1, index, logits.gather(-1, index))
    naive = masked.float().softmax(-1) @ v.float()
    assert (naive - exact).abs().max() > 4 * 2**-8
