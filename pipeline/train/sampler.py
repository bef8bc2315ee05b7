"""The official HMHI-Net training clip sampler (docs/model.md §9).

Frames are chosen among the *eligible* frames (those with a ground-truth mask), numbered 0..n-1 in frame order
(the official code's frame indices; every frame of its training sets is annotated):
1. the first pick is uniform over all eligible frames;
2. each next pick is uniform over the *shrinking* list of frames not picked yet, sliced at positions
   ``[prev - max_skip, prev + max_skip)`` where ``prev`` is the previous pick's **frame number** (not its position
   in the shrinking list: ZhengxyFlow/HMHI-Net ``utils/dataloader.py`` slices ``all_frames`` with
   ``selected_frames[i]``), and the slice never includes the last remaining frame; an empty slice falls back to
   every remaining frame;
3. the picks are sorted, so the reference frame is the earliest one;
4. videos shorter than the clip repeat their last frame.

Because earlier picks have left the list, a frame number used as a position points a little past the previous
pick, which widens the clips: the mean span (last - first frame) of a 5-frame clip from a 36-frame video is about
11.5 frames, against 10.7 when the position of the previous pick is used.
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
    frames = sorted(int(i) for i in eligible)
    if not frames:
        raise ValueError("no eligible frames (no frame of this sample has a ground-truth mask)")
    remaining = list(range(len(frames)))  # frame numbers not picked yet, in order (the official all_frames)
    prev = int(rng.integers(len(remaining)))
    remaining.remove(prev)
    picks = [prev]
    while len(picks) < clip_length and remaining:
        # The official code slices the shrinking list at the previous pick's frame number.
        window = remaining[max(0, prev - max_skip) : min(prev + max_skip, len(remaining) - 1)] or remaining
        prev = window[int(rng.integers(len(window)))]
        remaining.remove(prev)
        picks.append(prev)
    picks.sort()
    picks.extend([picks[-1]] * (clip_length - len(picks)))
    return [frames[i] for i in picks]
