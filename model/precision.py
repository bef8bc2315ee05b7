"""Inference precision: which dtype the model runs in, and the autocast context that applies it.

    dtype = resolve_precision("auto", device)          # torch.bfloat16 or torch.float32
    with autocast(device, dtype):
        logits, state = net.step(frame, flow, state)

``bf16`` runs ``net.step`` under ``torch.autocast`` (the module keeps its fp32 weights; matmuls and convolutions run
in bf16). The model keeps in fp32 what must stay fp32 for accuracy (see the comments at those places in ``model/``).
``auto`` picks bf16 only where the hardware computes it natively (a CUDA GPU with bf16 support, or a CPU with
AVX-512 BF16 / AMX); elsewhere bf16 is emulated and slower than fp32.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Literal

import torch

from model.settings import PRECISIONS

Precision = Literal["auto", "bf16", "fp32"]

__all__ = ["PRECISIONS", "Precision", "autocast", "native_bf16", "resolve_precision"]


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 matmuls natively (not emulated)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())
    return False


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype:
    """The dtype for ``precision`` ("auto", "bf16" or "fp32") on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or (precision == "auto" and not native_bf16(device)):
        return torch.float32
    return torch.bfloat16


@contextlib.contextmanager
def autocast(device: torch.device | str, dtype: torch.dtype) -> Iterator[None]:
    """``torch.autocast`` to ``dtype`` on ``device``'s type; a no-op for fp32."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=dtype):
        yield
