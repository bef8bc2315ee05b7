"""HMHI-Net (ACM MM 2025) as the official repository implements it (hmhi-architecture.md).

Per frame t of a video (RGB and flow picture, both ImageNet-normalised):

    z0..z3 = shared MiT([rgb; flow]) summed per level
    t == 0 (empty memory):  full, quarter = Decoder(z0, z1, z2, z3);       write (z1, z3, quarter)
    t >= 1:                 P = PixelMemory.read(z1);  S = SemanticMemory.read(z3)
                            P2 = SGIM(P, S);  S2 = PLAM(P, S)               (in parallel)
                            full, quarter = Decoder(z0, P2, z2, S2);        write (P2, S2, quarter)

Each memory is a FIFO of the last T written frames (frame 0 is not pinned). Two ways to run it:
:meth:`HMHINet.forward_clip` for training (whole clips, gradients flow through the memory) and
:meth:`HMHINet.init_state` / :meth:`HMHINet.step` for streaming inference with preallocated ring buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from model.architecture import MIT_VARIANTS, HMHIConfig
from model.backbone import DualStreamMiT
from model.errors import SettingError
from model.heads import PLAM, SGIM, TopDownDecoder
from model.memory import ConvNeXtBlock, LayerNorm2d, MemoryEncoder, ReadoutLayer

__all__ = ["HMHIConfig", "HMHINet", "MemoryBank", "SettingError", "StreamState"]


class MemoryBank(nn.Module):
    """One HMHI memory: the reference encoder (what a write stores) and the read-out layer (how it is read)."""

    def __init__(self, dim: int, mask_stride: int, mask_hidden: int, readout: ReadoutLayer):
        super().__init__()
        self.encoder = MemoryEncoder(dim, mask_stride, mask_hidden)
        self.readout = readout

    def encode(
        self, feature: torch.Tensor, quarter_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A frame's written feature (B, d, h, w) and quarter logits -> its projected (keys, values), (B, h*w, d)."""
        tokens = self.encoder(feature, quarter_logits)
        return self.readout.project_memory(tokens, feature.shape[2], feature.shape[3])


@dataclass
class StreamState:
    """Streaming memory of a batch of videos (one per batch element), from :meth:`HMHINet.init_state`.

    Ring buffers hold the *projected* cross-attention keys and values of the last T written frames per video;
    they are allocated on the first :meth:`HMHINet.step` (their size depends on the frame size) on the model's
    device and dtype, and updated in place. Memory use is fixed by (B, T, frame size) whatever the video length.
    """

    batch_size: int
    """Number of independent video slots."""
    memory_size: int
    """T: frames kept per memory."""
    stored: torch.Tensor
    """(B,) int64: frames currently in each video's memory (0..T)."""
    next_slot: torch.Tensor
    """(B,) int64: ring-buffer slot the next write goes to."""
    frames_seen: torch.Tensor
    """(B,) int64: frames processed since each video's last reset."""
    image_size: tuple[int, int] | None = None
    """(H, W) the buffers were allocated for; None until the first step."""
    pixel_keys: torch.Tensor | None = None
    """(B, T, h1*w1, d1) level-1 memory keys (RoPE applied)."""
    pixel_values: torch.Tensor | None = None
    """(B, T, h1*w1, d1) level-1 memory values."""
    semantic_keys: torch.Tensor | None = None
    """(B, T, h3*w3, d3) level-3 memory keys (sine code added before projection)."""
    semantic_values: torch.Tensor | None = None
    """(B, T, h3*w3, d3) level-3 memory values."""
    extra: dict = field(default_factory=dict)
    """Free slot for callers (e.g. video ids per batch element); the model never reads it."""

    def clear(self, which: torch.Tensor | None = None) -> None:
        """Empty the memory of the batch elements where ``which`` (B,) bool is True (all if None)."""
        if which is None:
            which = torch.ones(self.batch_size, dtype=torch.bool, device=self.stored.device)
        which = which.to(self.stored.device)
        with torch.inference_mode():  # the counters may be inference tensors once step() has run
            self.stored.masked_fill_(which, 0)
            self.next_slot.masked_fill_(which, 0)
            self.frames_seen.masked_fill_(which, 0)


class HMHINet(nn.Module):
    """HMHI-Net: shared MiT encoder with flow adapters, two FIFO memories, SGIM, PLAM and a CBAM decoder.

    Inputs are ImageNet-normalised float tensors; H and W must be multiples of 32 (512x512 is the official size;
    non-square sizes work but are out of the released checkpoints' distribution).
    """

    def __init__(self, config: HMHIConfig | None = None, model_name: str = ""):
        super().__init__()
        self.config = config or HMHIConfig()
        self.model_name = model_name
        cfg = self.config
        dims = MIT_VARIANTS[cfg.encoder].embed_dims
        self.embed_dims = dims
        self.backbone = DualStreamMiT(MIT_VARIANTS[cfg.encoder], cfg.drop_path_rate)
        self.decoder = TopDownDecoder(dims, cfg.decoder_width)
        self.pixel_memory = MemoryBank(
            dims[1],
            2,
            cfg.pixel_mask_hidden,
            ReadoutLayer(
                dims[1],
                cfg.readout_ffn_dim,
                cfg.readout_dropout,
                pos_on_self_attn=False,
                rope_on_cross_attn=True,
                pos_on_memory_keys=False,
                topk=cfg.topk,
            ),
        )
        self.semantic_memory = MemoryBank(
            dims[3],
            8,
            cfg.semantic_mask_hidden,
            ReadoutLayer(
                dims[3],
                cfg.readout_ffn_dim,
                cfg.readout_dropout,
                pos_on_self_attn=True,
                rope_on_cross_attn=False,
                pos_on_memory_keys=True,
                topk=None,
            ),
        )
        self.sgim = SGIM(dims[1], dims[3], cfg.readout_ffn_dim, cfg.readout_dropout)
        self.plam = PLAM(dims[1], dims[3])
        self._init_weights()

    # ------------------------------------------------------------------ initialisation (training from scratch)
    def _init_weights(self) -> None:
        """Official init order (§9): MiT init for the encoder (done in DualStreamMiT), N(0, 0.01) for every conv
        of encoder and decoder, PyTorch defaults for memories/SGIM/PLAM except Kaiming-uniform PLAM convs with
        zero bias and ConvNeXt layer scales of 1e-6. (The memory encoders' two fuser blocks are copies of one
        block, see :class:`model.memory.MemoryEncoder`.)"""
        for module in self.backbone.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.01)
        for module in self.decoder.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # Every PLAM conv, the CBAM 3x3 ones included, is built by the official Conv/ConvRelu wrappers, which call
        # kaiming_uniform_ with its default a=0 (bound sqrt(6 / fan_in), not PyTorch's Conv2d default a=sqrt(5))
        # and zero the bias.
        for module in self.plam.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=0.0)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, ConvNeXtBlock):
                nn.init.constant_(module.gamma, 1e-6)
            elif isinstance(module, LayerNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ per-frame pieces
    def _check_frames(self, frames: torch.Tensor, flows: torch.Tensor, ndim: int, name: str) -> None:
        if frames.shape != flows.shape:
            raise ValueError(
                f"{name}: frames {tuple(frames.shape)} and flows {tuple(flows.shape)} differ in shape"
            )
        if frames.ndim != ndim or frames.shape[-3] != 3:
            want = "(B, L, 3, H, W)" if ndim == 5 else "(B, 3, H, W)"
            raise ValueError(f"{name}: expected {want} tensors, got {tuple(frames.shape)}")
        height, width = frames.shape[-2:]
        if height % 32 or width % 32:
            raise ValueError(f"{name}: H and W must be multiples of 32, got {height}x{width}")

    def _read(
        self,
        z1: torch.Tensor,
        z3: torch.Tensor,
        pixel_kv,
        semantic_kv,
        key_valid: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
        trace: dict | None = None,
        prefix: str = "",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory read-outs, then SGIM and PLAM in parallel -> (level-1 replacement, level-3 replacement)."""
        pixel = self.pixel_memory.readout(z1, *pixel_kv, key_valid[0])
        semantic = self.semantic_memory.readout(z3, *semantic_kv, key_valid[1])
        pixel_out, semantic_out = self.sgim(pixel, semantic), self.plam(pixel, semantic)
        if trace is not None:
            trace.update(
                {
                    f"{prefix}mem0_readout": pixel,
                    f"{prefix}mem1_readout": semantic,
                    f"{prefix}sgim": pixel_out,
                    f"{prefix}plam": semantic_out,
                }
            )
        return pixel_out, semantic_out

    def _write(self, level1: torch.Tensor, level3: torch.Tensor, quarter: torch.Tensor):
        return self.pixel_memory.encode(level1, quarter), self.semantic_memory.encode(level3, quarter)

    # ------------------------------------------------------------------ training: whole clips
    def forward_clip(
        self, frames: torch.Tensor, flows: torch.Tensor, trace: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run clips frame by frame with fresh memories, as the official forward does.

        frames, flows: (B, L, 3, H, W) ImageNet-normalised. Returns (full, quarter) logits of shapes
        (B, L, 1, H, W) and (B, L, 1, H/4, W/4); frame 0 (no memory read) is included. Memory entries are not
        detached, so gradients flow through the memory and the predicted masks across the clip.
        ``trace``: optional dict filled with intermediate tensors under the fixture names
        (``frame0_z0`` .. ``frame0_z3``, ``frame{t}_mem0_readout``, ``frame{t}_mem1_readout``, ``frame{t}_sgim``,
        ``frame{t}_plam``), for parity checks.
        """
        self._check_frames(frames, flows, 5, "forward_clip")
        window = self.config.memory_size
        pixel_bank: list[tuple[torch.Tensor, torch.Tensor]] = []
        semantic_bank: list[tuple[torch.Tensor, torch.Tensor]] = []
        fulls, quarters = [], []
        for t in range(frames.shape[1]):
            z0, z1, z2, z3 = self.backbone(frames[:, t], flows[:, t])
            if trace is not None and t == 0:
                trace.update({f"frame0_z{i}": z for i, z in enumerate((z0, z1, z2, z3))})
            if pixel_bank:
                pixel_kv = tuple(torch.cat(parts, dim=1) for parts in zip(*pixel_bank))
                semantic_kv = tuple(torch.cat(parts, dim=1) for parts in zip(*semantic_bank))
                z1, z3 = self._read(z1, z3, pixel_kv, semantic_kv, trace=trace, prefix=f"frame{t}_")
            full, quarter = self.decoder([z0, z1, z2, z3])
            fulls.append(full)
            quarters.append(quarter)
            pixel_entry, semantic_entry = self._write(z1, z3, quarter)
            pixel_bank = (pixel_bank + [pixel_entry])[-window:]  # FIFO: the oldest frame leaves first
            semantic_bank = (semantic_bank + [semantic_entry])[-window:]
        return torch.stack(fulls, dim=1), torch.stack(quarters, dim=1)

    def forward(self, frames: torch.Tensor, flows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as :meth:`forward_clip` (so DDP wrappers can call the module directly)."""
        return self.forward_clip(frames, flows)

    # ------------------------------------------------------------------ streaming inference
    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> StreamState:
        """Empty streaming memory for ``batch_size`` independent videos (ring buffers come on the first step)."""
        if batch_size < 1:
            raise ValueError(f"init_state: batch_size must be >= 1, got {batch_size}")
        if device is None:
            device = next(self.parameters()).device
        zeros = lambda: torch.zeros(batch_size, dtype=torch.long, device=device)  # noqa: E731
        return StreamState(batch_size, self.config.memory_size, zeros(), zeros(), zeros())

    def _allocate(self, state: StreamState, height: int, width: int, pixel_kv, semantic_kv) -> None:
        busy = bool((state.stored > 0).any())
        if state.image_size is not None and state.image_size != (height, width) and busy:
            raise ValueError(
                f"step: frame size {height}x{width} differs from {state.image_size[0]}x"
                f"{state.image_size[1]} while videos are in memory; reset every video first"
            )
        if state.image_size == (height, width) and state.pixel_keys is not None:
            return
        batch, window = state.batch_size, state.memory_size

        def ring(like: torch.Tensor) -> torch.Tensor:
            return like.new_zeros((batch, window) + tuple(like.shape[1:]))

        state.pixel_keys, state.pixel_values = ring(pixel_kv[0]), ring(pixel_kv[1])
        state.semantic_keys, state.semantic_values = ring(semantic_kv[0]), ring(semantic_kv[1])
        state.image_size = (height, width)

    def step(
        self,
        frame: torch.Tensor,
        flow: torch.Tensor,
        state: StreamState,
        reset: torch.Tensor | None = None,
        active: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, StreamState]:
        """Process one frame of each video in the batch; returns ``(logits, state)``.

        frame, flow: (B, 3, H, W) ImageNet-normalised; ``logits`` is (B, 1, H, W) full-resolution logits.
        Batch element b is its own video:

        - ``reset`` (B,) bool, optional: True = element b starts a new video with this frame; its memory is
          cleared first, so this frame is that video's frame 0 (no memory read). A fresh state needs no reset.
        - ``active`` (B,) bool, optional (default all True): False = element b is idle (finished, or waiting
          for its next video); it is not computed, its memory and counters stay as they are, and its row of
          ``logits`` is 0 and must be ignored. Its frame/flow rows may hold anything (e.g. zeros).
          ``reset`` applies to idle elements too (their memory is cleared).

        The memory keeps the last T frames of each video in preallocated ring buffers updated in place
        (``state`` is modified and returned). In eval mode, stepping through a clip gives the same logits as
        :meth:`forward_clip`. Inference only: it runs under ``torch.inference_mode()`` (the ring buffers are
        written in place, which autograd cannot track); call ``model.eval()`` first, since dropout follows the
        module's mode. Wrap the call in ``torch.autocast`` for bf16.
        """
        with torch.inference_mode():
            return self._step(frame, flow, state, reset, active)

    def _step(self, frame, flow, state, reset, active):
        self._check_frames(frame, flow, 4, "step")
        if frame.shape[0] != state.batch_size:
            raise ValueError(
                f"step: batch of {frame.shape[0]} frames for a state of {state.batch_size} videos"
            )
        device = state.stored.device
        if reset is not None:
            state.clear(reset.to(device=device, dtype=torch.bool))
        active_mask = (
            torch.ones(state.batch_size, dtype=torch.bool, device=device)
            if active is None
            else active.to(device=device, dtype=torch.bool)
        )
        height, width = frame.shape[-2:]
        logits = frame.new_zeros((state.batch_size, 1, height, width))
        rows = active_mask.nonzero().flatten()
        if rows.numel() == 0:
            return logits, state
        all_rows = rows.numel() == state.batch_size
        take = (lambda x: x) if all_rows else (lambda x: x.index_select(0, rows.to(x.device)))

        z0, z1, z2, z3 = self.backbone(take(frame), take(flow))
        stored = state.stored[rows]
        with_memory = (stored > 0).nonzero().flatten()
        if with_memory.numel() > 0:
            mem_rows = rows[with_memory]
            window = state.memory_size
            slots_valid = torch.arange(window, device=device)[None, :] < stored[with_memory, None]  # (b, T)

            def bank(buffer: torch.Tensor) -> torch.Tensor:
                part = buffer if mem_rows.numel() == state.batch_size else buffer.index_select(0, mem_rows)
                return part.flatten(1, 2)  # (b, T*hw, d)

            def valid(tokens_per_frame: int) -> torch.Tensor | None:
                if bool(slots_valid.all()):
                    return None
                return slots_valid.repeat_interleave(tokens_per_frame, dim=1)

            pixel_kv = (bank(state.pixel_keys), bank(state.pixel_values))
            semantic_kv = (bank(state.semantic_keys), bank(state.semantic_values))
            whole = with_memory.numel() == rows.numel()
            pick = (lambda x: x) if whole else (lambda x: x.index_select(0, with_memory))
            p2, s2 = self._read(
                pick(z1),
                pick(z3),
                pixel_kv,
                semantic_kv,
                (valid(state.pixel_keys.shape[2]), valid(state.semantic_keys.shape[2])),
            )
            if whole:
                z1, z3 = p2, s2
            else:
                z1 = z1.index_copy(0, with_memory, p2.to(z1.dtype))
                z3 = z3.index_copy(0, with_memory, s2.to(z3.dtype))
        full, quarter = self.decoder([z0, z1, z2, z3])
        pixel_kv, semantic_kv = self._write(z1, z3, quarter)
        self._allocate(state, height, width, pixel_kv, semantic_kv)

        slot = state.next_slot[rows]
        for buffer, entry in (
            (state.pixel_keys, pixel_kv[0]),
            (state.pixel_values, pixel_kv[1]),
            (state.semantic_keys, semantic_kv[0]),
            (state.semantic_values, semantic_kv[1]),
        ):
            buffer[rows, slot] = entry.to(buffer.dtype)
        state.next_slot[rows] = (slot + 1) % state.memory_size
        state.stored[rows] = torch.clamp(stored + 1, max=state.memory_size)
        state.frames_seen[rows] += 1
        if all_rows:
            return full.to(logits.dtype), state
        logits[rows] = full.to(logits.dtype)
        return logits, state
