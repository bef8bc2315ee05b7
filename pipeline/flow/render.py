"""Optical flow -> RGB picture with the Middlebury colour wheel (the "flow image" HMHI-Net consumes).

A pure function: (H, W, 2) float flow in pixels, channel 0 = dx (right positive), channel 1 = dy (down
positive), the convention of OpenCV DIS and ptlflow. Hue encodes direction, saturation encodes magnitude
relative to ``max_radius`` (by default the sample's own largest magnitude); magnitudes beyond the radius are
drawn at 75% brightness. This matches the reference wheel of the official-model fixture
(``fixtures/official_hmhi/make_inputs.py``) bit for bit; bump :data:`RENDER_VERSION` on any change, since it is
recorded in every shard sample and a model trained on one rendering must not be fed another.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RENDER_VERSION", "colour_wheel", "flow_to_rgb"]

RENDER_VERSION = "middlebury-55-v1"
"""Identifier of this rendering (wheel, normalisation, rounding); stored in sample metadata."""

# Segment lengths of the Middlebury wheel: red-yellow, yellow-green, green-cyan, cyan-blue, blue-magenta,
# magenta-red (Baker et al., "A Database and Evaluation Methodology for Optical Flow").
_SEGMENTS = (15, 6, 4, 11, 13, 6)
_EPS = 1e-5


def colour_wheel() -> np.ndarray:
    """The 55 wheel colours as a (55, 3) float array in [0, 255]."""
    # Each segment holds one channel at 255 and ramps another one up or down.
    layout = ((0, 1, True), (1, 0, False), (1, 2, True), (2, 1, False), (2, 0, True), (0, 2, False))
    wheel = np.zeros((sum(_SEGMENTS), 3))
    start = 0
    for n, (full, ramp, up) in zip(_SEGMENTS, layout, strict=True):
        r = np.floor(255 * np.arange(n) / n)
        wheel[start:start + n, full] = 255
        wheel[start:start + n, ramp] = r if up else 255 - r
        start += n
    return wheel


_WHEEL = colour_wheel()


def flow_to_rgb(flow: np.ndarray, max_radius: float | None = None) -> np.ndarray:
    """Render (H, W, 2) flow (dx, dy) as (H, W, 3) uint8 RGB.

    Args:
        flow: float array, last axis (dx, dy) in pixels. Leading axes other than (H, W) are allowed.
        max_radius: magnitude drawn at full saturation; ``None`` uses this sample's largest magnitude, so every
            picture uses the whole saturation range (a zero flow renders white).
    """
    flow = np.asarray(flow, dtype=np.float64)
    if flow.shape[-1] != 2:
        raise ValueError(f"flow must have a last axis of size 2 (dx, dy), got shape {flow.shape}")
    if not np.all(np.isfinite(flow)):
        flow = np.nan_to_num(flow, nan=0.0, posinf=0.0, neginf=0.0)
    if max_radius is None:
        max_radius = float(np.sqrt((flow ** 2).sum(-1)).max()) if flow.size else 0.0
    elif not max_radius >= 0:
        raise ValueError(f"max_radius must be >= 0, got {max_radius!r}")
    u = flow[..., 0] / (max_radius + _EPS)
    v = flow[..., 1] / (max_radius + _EPS)
    rad = np.sqrt(u * u + v * v)
    ncols = _WHEEL.shape[0]
    angle = np.arctan2(-v, -u) / np.pi
    fk = (angle + 1) / 2 * (ncols - 1)
    k0 = np.floor(fk).astype(np.int64)
    k1 = k0 + 1
    k1[k1 == ncols] = 0
    f = (fk - k0)[..., None]
    col = (1 - f) * _WHEEL[k0] / 255.0 + f * _WHEEL[k1] / 255.0
    inside = (rad <= 1)[..., None]
    col = np.where(inside, 1 - rad[..., None] * (1 - col), col * 0.75)
    return np.floor(255 * col).astype(np.uint8)
