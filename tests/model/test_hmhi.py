"""HMHI-Net behaviour on tiny CPU models: shapes, streaming == clip forward, FIFO, resets, gradients, bf16."""

from __future__ import annotations

import pytest
import torch

from model import HMHIConfig, create_model, list_models
from tests.model.helpers import random_clip, tiny_model

ATOL = 2e-5  # fp32, different op batching between streaming and clip paths


def stream(net, frames, flows, **step_kwargs):
    """Run a (B, L, ...) clip through step() one frame at a time -> (B, L, 1, H, W)."""
    state = net.init_state(frames.shape[0])
    outs = []
    with torch.inference_mode():
        for t in range(frames.shape[1]):
            logits, state = net.step(frames[:, t], flows[:, t], state, **step_kwargs)
            outs.append(logits)
    return torch.stack(outs, dim=1), state


def test_registry_lists_all_variants():
    assert list_models() == [f"hmhi_mit_b{i}" for i in range(6)]
    assert list_models("*b1") == ["hmhi_mit_b1"]
    with pytest.raises(ValueError, match="hmhi_mit_b9"):
        create_model("hmhi_mit_b9")
    with pytest.raises(TypeError, match="memory_frames"):
        create_model("hmhi_mit_b0", memory_frames=3)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="memory_size"):
        HMHIConfig(memory_size=0)
    with pytest.raises(ValueError, match="encoder"):
        HMHIConfig(encoder="mit_b7")


def test_official_b1_parameter_count():
    net = create_model("hmhi_mit_b1")
    # 47,216,330 official parameters minus the 1,116,672 dead cross-attention copies we do not build.
    assert sum(p.numel() for p in net.parameters()) == 46_099_658


# The larger MiT variants take a minute or more each on 2 cores: `slow` keeps them out of `make test-fast`.
@pytest.mark.parametrize(
    "name",
    [f"hmhi_mit_b{i}" if i < 3 else pytest.param(f"hmhi_mit_b{i}", marks=pytest.mark.slow) for i in range(6)],
)
def test_variant_shapes(name):
    net = create_model(name, decoder_width=32, readout_ffn_dim=64).eval()
    frames, flows = random_clip(1, 2, size=64)
    with torch.inference_mode():
        full, quarter = net.forward_clip(frames, flows)
    assert full.shape == (1, 2, 1, 64, 64) and quarter.shape == (1, 2, 1, 16, 16)
    assert torch.isfinite(full).all()
    dims = net.embed_dims
    with torch.inference_mode():
        levels = net.backbone(frames[:, 0], flows[:, 0])
    assert [tuple(z.shape) for z in levels] == [
        (1, dims[i], 64 // 4 // 2**i, 64 // 4 // 2**i) for i in range(4)
    ]


def test_input_checks():
    net = tiny_model().eval()
    frames, flows = random_clip(1, 1, size=64)
    with pytest.raises(ValueError, match="multiples of 32"):
        net.forward_clip(frames[..., :48, :48], flows[..., :48, :48])
    with pytest.raises(ValueError, match="differ in shape"):
        net.forward_clip(frames, flows[:, :, :, :32])
    state = net.init_state(2)
    with pytest.raises(ValueError, match="batch of 1 frames for a state of 2"):
        net.step(frames[:, 0], flows[:, 0], state)


def test_streaming_equals_clip_forward_with_fifo_eviction():
    """T=2 over 6 frames: the clip path drops the oldest list entry, the stream overwrites a ring slot."""
    net = tiny_model(memory_size=2).eval()
    frames, flows = random_clip(2, 6, size=64)
    with torch.inference_mode():
        clip_full, _ = net.forward_clip(frames, flows)
    streamed, state = stream(net, frames, flows)
    torch.testing.assert_close(streamed, clip_full, atol=ATOL, rtol=0)
    assert state.stored.tolist() == [2, 2] and state.frames_seen.tolist() == [6, 6]
    assert state.next_slot.tolist() == [0, 0]  # 6 writes into 2 slots
    assert state.pixel_keys.shape[:2] == (2, 2)  # the ring never grows


@pytest.mark.slow  # a long streaming run: over a minute on 2 cores
def test_fifo_window_changes_outputs_exactly_after_T_frames():
    """Frames 0..T read the same memory whatever the window; frame T+1 is the first that misses frame 0."""
    frames, flows = random_clip(1, 5, size=64, seed=3)
    outs = {}
    for window in (2, 4):
        net = tiny_model(memory_size=window).eval()
        with torch.inference_mode():
            outs[window] = net.forward_clip(frames, flows)[0]
    torch.testing.assert_close(outs[2][:, :3], outs[4][:, :3], atol=0, rtol=0)
    assert (outs[2][:, 3] - outs[4][:, 3]).abs().max() > 1e-4
    # and the stream with T=2 evicts exactly like the clip path
    net = tiny_model(memory_size=2).eval()
    streamed, _ = stream(net, frames, flows)
    torch.testing.assert_close(streamed, outs[2], atol=ATOL, rtol=0)


@pytest.mark.slow  # a long streaming run: over a minute on 2 cores
def test_memory_is_bounded_whatever_the_length():
    net = tiny_model(memory_size=3).eval()
    frames, flows = random_clip(1, 2, size=64)
    state = net.init_state(1)
    with torch.inference_mode():
        for _ in range(12):
            _, state = net.step(frames[:, 0], flows[:, 0], state)
            if state.pixel_keys is not None:
                assert state.pixel_keys.shape[1] == 3
    assert int(state.stored[0]) == 3 and int(state.frames_seen[0]) == 12


def test_reset_inside_a_batch():
    """Element 1 switches to a new video mid-batch; element 0 goes on. Each equals its own single-video run."""
    net = tiny_model(memory_size=2).eval()
    video_a = random_clip(1, 5, size=64, seed=1)
    video_b = random_clip(1, 2, size=64, seed=2)
    video_c = random_clip(1, 3, size=64, seed=4)
    seq1_frames = torch.cat([video_b[0], video_c[0]], dim=1)
    seq1_flows = torch.cat([video_b[1], video_c[1]], dim=1)
    state = net.init_state(2)
    outs = []
    with torch.inference_mode():
        for t in range(5):
            frame = torch.cat([video_a[0][:, t], seq1_frames[:, t]])
            flow = torch.cat([video_a[1][:, t], seq1_flows[:, t]])
            reset = torch.tensor([False, t == 2])
            logits, state = net.step(frame, flow, state, reset=reset)
            outs.append(logits)
        out = torch.stack(outs, dim=1)
        ref_a = net.forward_clip(*video_a)[0]
        ref_b = net.forward_clip(*video_b)[0]
        ref_c = net.forward_clip(*video_c)[0]
    torch.testing.assert_close(out[0:1], ref_a, atol=ATOL, rtol=0)
    torch.testing.assert_close(out[1:2, :2], ref_b, atol=ATOL, rtol=0)
    torch.testing.assert_close(out[1:2, 2:], ref_c, atol=ATOL, rtol=0)
    # without the reset, element 1 would have read video b's memory at its frame 2
    assert (out[1:2, 2] - stream(net, seq1_frames, seq1_flows)[0][:, 2]).abs().max() > 1e-4


def test_videos_of_different_lengths_in_one_batch():
    """Three slots: lengths 4, 2 and 3, the third starting late; idle slots are skipped and keep their memory."""
    net = tiny_model(memory_size=3).eval()
    videos = [random_clip(1, n, size=64, seed=10 + n) for n in (4, 2, 3)]
    starts = [0, 0, 1]
    state = net.init_state(3)
    got = [[] for _ in videos]
    with torch.inference_mode():
        for t in range(4):
            frame = torch.zeros(3, 3, 64, 64)
            flow = torch.zeros(3, 3, 64, 64)
            active = torch.zeros(3, dtype=torch.bool)
            for i, (v_frames, v_flows) in enumerate(videos):
                k = t - starts[i]
                if 0 <= k < v_frames.shape[1]:
                    frame[i], flow[i], active[i] = v_frames[0, k], v_flows[0, k], True
            before = state.frames_seen.clone()
            logits, state = net.step(frame, flow, state, active=active)
            assert torch.equal(state.frames_seen, before + active.long())
            assert (logits[~active] == 0).all()
            for i in active.nonzero().flatten().tolist():
                got[i].append(logits[i])
        for i, clip in enumerate(videos):
            ref = net.forward_clip(*clip)[0][0]
            torch.testing.assert_close(torch.stack(got[i]), ref, atol=ATOL, rtol=0)
        # a fully idle step changes nothing
        snapshot = state.pixel_keys.clone()
        logits, state = net.step(frame, flow, state, active=torch.zeros(3, dtype=torch.bool))
        assert torch.equal(state.pixel_keys, snapshot) and (logits == 0).all()


def test_gradients_flow_through_memory_in_training():
    net = tiny_model(memory_size=3).train()
    frames, flows = random_clip(2, 3, size=64)
    frames.requires_grad_(True)
    full, quarter = net.forward_clip(frames, flows)
    assert full.shape == (2, 3, 1, 64, 64) and quarter.shape == (2, 3, 1, 16, 16)
    full[:, 2].sum().backward()  # loss on the last frame only
    # frame 0 reaches frame 2 only through the memory writes (its features and predicted mask)
    assert frames.grad[:, 0].abs().sum() > 0
    for module in (
        net.pixel_memory.encoder,
        net.semantic_memory.encoder,
        net.pixel_memory.readout,
        net.semantic_memory.readout,
        net.sgim,
        net.plam,
    ):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    # every parameter gets a gradient (DDP needs no find_unused_parameters)
    assert all(p.grad is not None for p in net.parameters())


def test_training_mode_uses_dropout():
    net = tiny_model().train()
    frames, flows = random_clip(1, 2, size=64)
    torch.manual_seed(0)
    a = net.forward_clip(frames, flows)[0]
    torch.manual_seed(1)
    b = net.forward_clip(frames, flows)[0]
    assert (a[:, 1] - b[:, 1]).abs().max() > 0


def test_bf16_forward_stays_finite():
    net = tiny_model(memory_size=2).eval()
    frames, flows = random_clip(2, 4, size=64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        full, quarter = net.forward_clip(frames, flows)
        streamed, _ = stream(net, frames, flows)
    assert torch.isfinite(full).all() and torch.isfinite(quarter).all() and torch.isfinite(streamed).all()
    with torch.inference_mode():
        ref = net.forward_clip(frames, flows)[0]
    assert (full.float() - ref).abs().max() < 0.25 * ref.abs().max() + 0.05


def test_non_square_input_runs():
    net = tiny_model().eval()
    frames, flows = random_clip(1, 3, size=64)
    frames, flows = frames[..., :32, :], flows[..., :32, :]
    with torch.inference_mode():
        full, _ = net.forward_clip(frames, flows)
        streamed, _ = stream(net, frames, flows)
    assert full.shape == (1, 3, 1, 32, 64)
    torch.testing.assert_close(streamed, full, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "shape, factor", [((2, 3, 8, 8), 2), ((1, 5, 6, 10), 2), ((1, 1, 16, 16), 4), ((1, 2, 1, 3), 4)]
)
def test_bicubic_upsampling_equals_torch_interpolate(shape, factor):
    """The decoder's matmul bicubic upsampling gives F.interpolate's numbers: fp32 up to summation order; bf16
    computed in fp32 and rounded once (within half a bf16 step of the fp32 result; torch's own bf16 kernel, with
    bf16 weights, strays further at factor 4); borders clamped; non-square maps too."""
    import torch.nn.functional as F

    from model.heads import upsample_bicubic

    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 3
    reference = F.interpolate(x, scale_factor=factor, mode="bicubic", align_corners=False)
    torch.testing.assert_close(upsample_bicubic(x, factor), reference, atol=2e-6, rtol=1e-6)
    low = x.bfloat16()
    ours = upsample_bicubic(low, factor)
    exact = F.interpolate(low.float(), scale_factor=factor, mode="bicubic", align_corners=False)
    assert ours.dtype == torch.bfloat16
    assert ((ours.float() - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all()  # half a bf16 step


def test_bicubic_matrices_cached_in_inference_serve_training():
    """The interpolation matrices are cached; one first built under inference_mode must still work with autograd."""
    from model.heads import upsample_bicubic

    with torch.inference_mode():
        upsample_bicubic(torch.randn(1, 1, 7, 7), 2)
    x = torch.randn(1, 1, 7, 7, requires_grad=True)
    upsample_bicubic(x, 2).sum().backward()
    # Every output row/column of the interpolation sums to 1, so d(sum)/dx sums to the number of outputs.
    assert x.grad is not None and torch.isclose(x.grad.sum(), torch.tensor(14.0 * 14.0))
