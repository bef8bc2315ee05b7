"""The official HMHI-Net training clip sampler (docs/hmhi-architecture.md §14).

Frames are chosen among the *eligible* positions (those with a ground-truth mask):
1. the first pick is uniform over all eligible frames;
2. each next pick is uniform over the remaining frames whose position in the shrinking list of remaining
   frames lies in ``[prev - max_skip, prev + max_skip)``, where ``prev`` is the previous pick's position in that
   list, and the window never includes the last remaining frame; an empty window falls back to every
   remaining frame;
3. the picks are sorted, so the reference frame is the earliest one;
4. videos shorter than the clip repeat their last frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["sample_clip_indices"]


def sample_clip_indices(
    eligible: Sequence[int], clip_length: int, max_skip: int, rng: np.random.Generator
) -> list[int]:
    """Pick ``clip_length`` frame indices from ``eligible`` (sorted ascending) with the official sampler.

    Returns indices into the sample's frame axis, sorted, padded with the last pick when fewer than
    ``clip_length`` frames are eligible.
    """
    if clip_length < 1:
        raise ValueError(f"clip_length must be >= 1, got {clip_length}")
    remaining = sorted(int(i) for i in eligible)
    if not remaining:
        raise ValueError("no eligible frames (no frame of this sample has a ground-truth mask)")
    prev = int(rng.integers(len(remaining)))
    picks = [remaining.pop(prev)]
    while len(picks) < clip_length and remaining:
        lo = max(0, prev - max_skip)
        hi = min(len(remaining) - 1, prev + max_skip)
        window = list(range(lo, hi)) or list(range(len(remaining)))
        prev = window[int(rng.integers(len(window)))]
        picks.append(remaining.pop(prev))
    picks.sort()
    picks.extend([picks[-1]] * (clip_length - len(picks)))
    return picks
