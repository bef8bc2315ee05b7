"""Memory parts of HMHI-Net: positional codes, the reference (memory) encoder and the read-out layer.

hmhi-architecture.md §3-§6. One read-out layer type serves the level-1 pixel memory, the level-3 semantic
memory and SGIM; the differences are flags (positional codes on self-attention q/k, RoPE on cross-attention,
top-k). Memory keys and values are projected once, when a frame is written (:meth:`ReadoutLayer.project_memory`),
instead of re-projecting the whole bank at every read: the projections act token by token, so the result is the
same and each stored frame costs one projection.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "sine_position_code",
    "rope_tables",
    "apply_rope",
    "LayerNorm2d",
    "ConvNeXtBlock",
    "MemoryEncoder",
    "MultiheadProjections",
    "ReadoutLayer",
    "topk_cross_attention",
    "dense_topk_attention",
]

_SINE_CACHE: dict[tuple, torch.Tensor] = {}
_ROPE_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def sine_position_code(channels: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """2-D sine code (SAM 2 / DETR, normalised, scale 2pi) as tokens (h*w, C): y block first, then x block.

    The code depends only on the grid, so it is cached per (C, h, w, device); it is fp32 and never trained.
    """
    key = (channels, height, width, str(device))
    code = _SINE_CACHE.get(key)
    if code is None:
        half = channels // 2
        eps, scale = 1e-6, 2 * math.pi
        y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
        x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
        y = y / (height + eps) * scale
        x = x / (width + eps) * scale
        dim_t = torch.arange(half, dtype=torch.float32, device=device)
        dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)

        def encode(pos: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, half): sin on even channels, cos on odd
            p = pos[:, None] / dim_t
            return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

        code_y = encode(y)[:, None, :].expand(height, width, half)
        code_x = encode(x)[None, :, :].expand(height, width, half)
        code = torch.cat([code_y, code_x], dim=-1).reshape(height * width, channels)
        with torch.inference_mode(False):
            code = code.clone()
        _SINE_CACHE[key] = code
    return code


def rope_tables(dim: int, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D axial RoPE (SAM 2 style, theta 1e4) as (cos, sin), each (h*w, dim/2), for pairs (2m, 2m+1).

    Pair m < dim/4 rotates by x * f_m, pair m >= dim/4 by y * f_(m - dim/4), with f_j = 10000^(-4j/dim),
    x = n mod w and y = n div w. The official code assumes a square grid (side sqrt(N)); building the table from
    the real (h, w) gives the same numbers for square grids and also covers non-square ones.
    """
    key = (dim, height, width, str(device))
    tables = _ROPE_CACHE.get(key)
    if tables is None:
        freqs = 1.0 / (10000.0 ** (torch.arange(0, dim, 4, device=device)[: dim // 4].float() / dim))
        n = torch.arange(height * width, device=device)
        t_x = (n % width).float()
        t_y = torch.div(n, width, rounding_mode="floor").float()
        angles = torch.cat([torch.outer(t_x, freqs), torch.outer(t_y, freqs)], dim=-1)  # (N, dim/2)
        # SAM 2 builds these as complex polar(1, angle); its real/imag parts are exactly cos/sin.
        tables = (torch.cos(angles), torch.sin(angles))
        with torch.inference_mode(False):
            tables = (tables[0].clone(), tables[1].clone())
        _ROPE_CACHE[key] = tables
    return tables


def apply_rope(x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate (..., N, dim) by the RoPE tables for N tokens, in fp32, and cast back to x's dtype.

    If x holds a whole number of copies of the table's N (memory keys: T frames x h*w tokens), the table is
    tiled, so every stored frame gets the same spatial rotation (official behaviour).
    """
    cos, sin = tables
    tokens = x.shape[-2]
    if tokens != cos.shape[0]:
        repeat = tokens // cos.shape[0]
        cos, sin = cos.repeat(repeat, 1), sin.repeat(repeat, 1)
    pairs = x.float().unflatten(-1, (-1, 2))
    re, im = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((re * cos - im * sin, re * sin + im * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW map (biased variance, eps 1e-6), as in SAM 2."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        # Statistics in fp32 even under bf16 autocast (a no-op in fp32): a bf16 mean and (x - mean)^2 lose most of
        # their significant bits to cancellation, as nn.LayerNorm's own kernels avoid by accumulating in fp32.
        x = x.float()
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return (self.weight[:, None, None] * x + self.bias[:, None, None]).to(dtype)


class ConvNeXtBlock(nn.Module):
    """dwconv 7x7 -> LN2d -> Linear(d, 4d) -> GELU -> Linear(4d, d) -> * gamma -> + input (no drop path)."""

    def __init__(self, dim: int, layer_scale_init: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(y))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class MemoryEncoder(nn.Module):
    """What a memory write stores: tokens of CX(CX(proj(feature) + MaskDown(sigmoid(quarter logits)))).

    ``mask_stride`` is the stride from the 1/4-resolution logits to the feature map (2 for level 1, 8 for
    level 3); the kernel is 3 for stride 2 and 2*stride - 1 (15) for stride 8, as in the official model.
    """

    def __init__(self, dim: int, mask_stride: int, mask_hidden: int):
        super().__init__()
        kernel = 3 if mask_stride == 2 else 2 * mask_stride - 1
        self.mask_downsampler = nn.Sequential(
            nn.Conv2d(1, mask_hidden, kernel, stride=mask_stride, padding=kernel // 2),
            LayerNorm2d(mask_hidden),
            nn.GELU(),
            nn.Conv2d(mask_hidden, dim, 1),
            LayerNorm2d(dim),
            nn.GELU(),
        )
        self.feat_proj = nn.Conv2d(dim, dim, 1)
        # The official Fuser deep-copies one block (get_clones), so both blocks start from the same weights.
        block = ConvNeXtBlock(dim)
        self.fuser = nn.Sequential(block, copy.deepcopy(block))

    def forward(self, feature: torch.Tensor, quarter_logits: torch.Tensor) -> torch.Tensor:
        """feature (B, d, h, w), quarter_logits (B, 1, H/4, W/4) -> (B, h*w, d) memory tokens."""
        x = self.feat_proj(feature) + self.mask_downsampler(torch.sigmoid(quarter_logits))
        return self.fuser(x).flatten(2).transpose(1, 2)


class MultiheadProjections(nn.Module):
    """q/k/v/out Linear(d, d) with bias, one head (the official read-out attention)."""

    def __init__(self, dim: int):
        super().__init__()
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)


def topk_cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    topk: int,
    key_valid: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    chunk_elements: int = 1 << 23,
) -> torch.Tensor:
    """Single-head attention where each query keeps only its ``topk`` largest logits over all keys.

    q (B, Nq, d), k and v (B, Nk, d), key_valid (B, Nk) bool or None. Equal to the official dense form
    (:func:`dense_topk_attention`): the dense softmax is zero outside the kept logits, so it is the softmax of the
    kept logits, and the product with v only needs the kept rows of v, which are summed with their weights by
    ``embedding_bag`` (never materialised). Queries are processed in chunks so that at most ~``chunk_elements``
    logits exist at once (the Nq x Nk matrix is never built whole). If fewer than ``topk`` keys are valid, every
    valid key is kept (invalid ones get weight 0).

    Low precision (q in bf16/fp16, e.g. under autocast): the full logit matrix is computed in q's dtype only to
    shortlist ``1.5 * topk`` keys per query; the kept logits are then recomputed in fp32 from those keys, and the
    top-``topk`` choice, the softmax and the weighted sum of v run in fp32. Why: bf16 keeps 8 significant bits,
    so bf16 logits tie and reorder around the 50th place (the fp32 gap there is often < 1e-4, see the fixture
    README) and the softmax weights would carry ~0.4% errors; 25 extra places cover such reorderings (a wider
    shortlist costs top-k time: 100 places made the read-out 1.5x slower on CPU).
    """
    batch, n_q, dim = q.shape
    n_k = k.shape[1]
    keep = min(topk, n_k)
    low_precision = q.dtype in (torch.bfloat16, torch.float16)
    shortlist = min(n_k, keep + keep // 2) if low_precision else keep
    chunk = max(1, min(n_q, chunk_elements // max(1, batch * n_k)))
    k_t = k.transpose(1, 2).to(q.dtype)
    v_flat = v.reshape(batch * n_k, dim)
    if low_precision:
        v_flat = v_flat.float()
        k_flat = k.reshape(batch * n_k, dim).float()
    offsets = (torch.arange(batch, device=q.device) * n_k).view(batch, 1, 1)
    outputs = []
    for start in range(0, n_q, chunk):
        q_chunk = q[:, start : start + chunk]
        # logits = q k^T / sqrt(d), scaled inside the GEMM (one pass over the chunk instead of two)
        logits = torch.baddbmm(q_chunk.new_empty(()), q_chunk, k_t, beta=0.0, alpha=dim**-0.5)
        if key_valid is not None:
            logits.masked_fill_(~key_valid[:, None, :], float("-inf"))
        top_logits, top_index = logits.topk(shortlist, dim=-1, sorted=False)
        del logits
        if low_precision:
            with torch.autocast(q.device.type, enabled=False):  # fp32 from here on (see the docstring)
                candidates = k_flat.index_select(0, (top_index + offsets).flatten()).view(
                    *top_index.shape, dim
                )
                exact = (candidates * q_chunk.float()[:, :, None, :]).sum(-1) * dim**-0.5  # (B, c, shortlist)
                if key_valid is not None:
                    exact.masked_fill_(torch.isneginf(top_logits), float("-inf"))
                top_logits, pick = exact.topk(keep, dim=-1, sorted=False)
                top_index = top_index.gather(-1, pick)
        weights = F.dropout(top_logits.softmax(dim=-1), p=dropout_p, training=dropout_p > 0)
        rows = (top_index + offsets).flatten(0, 1)  # (B*c, keep) rows of v_flat
        out = F.embedding_bag(
            rows, v_flat, per_sample_weights=weights.flatten(0, 1).to(v_flat.dtype), mode="sum"
        )
        outputs.append(out.view(batch, -1, dim).to(q.dtype))
    return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]


def dense_topk_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    topk: int,
    key_valid: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    chunk_elements: int = 0,
) -> torch.Tensor:
    """The official formulation, as a reference: full logits, -inf outside the top k, softmax, dropout, @ v."""
    logits = torch.matmul(q, k.transpose(1, 2)) / math.sqrt(q.shape[-1])
    if key_valid is not None:
        logits = logits.masked_fill(~key_valid[:, None, :], float("-inf"))
    index = logits.topk(min(topk, k.shape[1]), dim=-1).indices
    masked = torch.full_like(logits, float("-inf")).scatter(-1, index, logits.gather(-1, index))
    weights = F.dropout(masked.softmax(dim=-1), p=dropout_p, training=dropout_p > 0)
    return torch.matmul(weights, v)


class ReadoutLayer(nn.Module):
    """One pre-LN transformer layer (SA -> CA -> FFN) plus a final LN; the output replaces the feature.

    x = f + 0.1 pos; x += SA(LN1 x); x += CA(LN2 x, memory); x += FFN(LN3 x); out = LN(x). One head, scale
    1/sqrt(d), RoPE on the self-attention q/k, dropout on both residual branches, inside the FFN and on the
    attention probabilities (all off in eval).
    """

    def __init__(
        self,
        dim: int,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        *,
        pos_on_self_attn: bool,
        rope_on_cross_attn: bool,
        pos_on_memory_keys: bool,
        topk: int | None,
    ):
        super().__init__()
        self.dim = dim
        self.self_attn = MultiheadProjections(dim)
        self.cross_attn = MultiheadProjections(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = dropout
        self.pos_on_self_attn = pos_on_self_attn
        self.rope_on_cross_attn = rope_on_cross_attn
        self.pos_on_memory_keys = pos_on_memory_keys
        self.topk = topk
        self.topk_chunk_elements = 1 << 23
        """Logits materialised at once by the top-k read-out (queries are chunked to stay under it)."""
        self.topk_attention = topk_cross_attention
        """Top-k attention implementation (:func:`dense_topk_attention` gives the official formulation)."""

    def project_memory(
        self, tokens: torch.Tensor, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory tokens (B, h*w, d) of one frame -> its cross-attention (keys, values), ready to be banked."""
        keys_in = tokens
        if self.pos_on_memory_keys:
            keys_in = tokens + sine_position_code(self.dim, height, width, tokens.device).to(tokens.dtype)
        keys = self.cross_attn.k_proj(keys_in)
        if self.rope_on_cross_attn:
            keys = apply_rope(keys, rope_tables(self.dim, height, width, tokens.device))
        return keys, self.cross_attn.v_proj(tokens)

    def forward(
        self,
        feature: torch.Tensor,
        memory_keys: torch.Tensor,
        memory_values: torch.Tensor,
        key_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """feature (B, d, h, w); projected memory (B, Nk, d) each; key_valid (B, Nk) bool or None -> (B, d, h, w)."""
        batch, dim, height, width = feature.shape
        p_drop = self.dropout if self.training else 0.0
        pos = sine_position_code(dim, height, width, feature.device).to(feature.dtype)
        rope = rope_tables(dim, height, width, feature.device)
        x = feature.permute(0, 2, 3, 1).flatten(1, 2) + 0.1 * pos  # (B, N, d); a view for channels-last input

        y = self.norm1(x)
        qk_in = y + pos if self.pos_on_self_attn else y
        sa = self.self_attn
        q = apply_rope(sa.q_proj(qk_in), rope)
        k = apply_rope(sa.k_proj(qk_in), rope)
        attn = F.scaled_dot_product_attention(q, k, sa.v_proj(y), dropout_p=p_drop)
        x = x + F.dropout(sa.out_proj(attn), p_drop, self.training)

        y = self.norm2(x)
        ca = self.cross_attn
        q = ca.q_proj(y)
        if self.rope_on_cross_attn:
            q = apply_rope(q, rope)
        if self.topk is not None:
            attn = self.topk_attention(
                q, memory_keys, memory_values, self.topk, key_valid, p_drop, self.topk_chunk_elements
            )
        else:
            mask = None if key_valid is None else key_valid[:, None, :]
            attn = F.scaled_dot_product_attention(
                q, memory_keys, memory_values, attn_mask=mask, dropout_p=p_drop
            )
        x = x + F.dropout(ca.out_proj(attn), p_drop, self.training)

        y = self.linear2(F.dropout(F.relu(self.linear1(self.norm3(x))), p_drop, self.training))
        x = self.norm(x + F.dropout(y, p_drop, self.training))
        return x.unflatten(1, (height, width)).permute(
            0, 3, 1, 2
        )  # NCHW view, channels-last memory (no copy)
