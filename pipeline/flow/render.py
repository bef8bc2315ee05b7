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
        wheel[start : start + n, full] = 255
        wheel[start : start + n, ramp] = r if up else 255 - r
        start += n
    return wheel


_WHEEL = colour_wheel()
_WHEEL_PLANES = np.ascontiguousarray(_WHEEL.T)
_NEXT_WHEEL_PLANES = np.ascontiguousarray(np.roll(_WHEEL, -1, axis=0).T)  # colour k+1, wrapping to 0


def flow_to_rgb(flow: np.ndarray, max_radius: float | None = None) -> np.ndarray:
    """Render (H, W, 2) flow (dx, dy) as (H, W, 3) uint8 RGB.

    Args:
        flow: float array, last axis (dx, dy) in pixels. Leading axes other than (H, W) are allowed.
        max_radius: magnitude drawn at full saturation; ``None`` uses this sample's largest magnitude, so every
            picture uses the whole saturation range (a zero flow renders white).
    """
    flow = np.asarray(flow)
    if flow.shape[-1] != 2:
        raise ValueError(f"flow must have a last axis of size 2 (dx, dy), got shape {flow.shape}")
    # The reference's float64 arithmetic, operation for operation (so the picture is bit-identical), but on
    # contiguous per-channel planes and in place: a 480p frame takes half the time of (H, W, 3) temporaries.
    dx, dy = flow[..., 0].astype(np.float64), flow[..., 1].astype(np.float64)
    for plane in (dx, dy):
        if not np.isfinite(plane).all():
            np.nan_to_num(plane, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    if max_radius is None:
        # sqrt is monotonic and correctly rounded: sqrt(max(r2)) == max(sqrt(r2)), one sqrt instead of H*W.
        max_radius = float(np.sqrt((dx * dx + dy * dy).max())) if dx.size else 0.0
    elif not max_radius >= 0:
        raise ValueError(f"max_radius must be >= 0, got {max_radius!r}")
    u = np.divide(dx, max_radius + _EPS, out=dx)
    v = np.divide(dy, max_radius + _EPS, out=dy)
    rad = np.sqrt(u * u + v * v)
    fk = np.arctan2(-v, -u)
    fk /= np.pi
    fk += 1
    fk /= 2
    fk *= _WHEEL.shape[0] - 1
    k0 = np.floor(fk).astype(np.intp)  # in 0..54; colour k0 + 1 wraps to 0 (_NEXT_WHEEL_PLANES)
    f = np.subtract(fk, k0, out=fk)
    one_minus_f = 1 - f
    inside = rad <= 1
    out = np.empty(flow.shape[:-1] + (3,), np.uint8)
    for c in range(3):
        col = np.take(_WHEEL_PLANES[c], k0)
        col *= one_minus_f
        col /= 255.0
        upper = np.take(_NEXT_WHEEL_PLANES[c], k0)
        upper *= f
        upper /= 255.0
        col += upper
        # inside the unit disc: 1 - rad * (1 - col); outside: col * 0.75
        shaded = np.subtract(1, col, out=upper)
        shaded *= rad
        np.subtract(1, shaded, out=shaded)
        col *= 0.75
        np.copyto(col, shaded, where=inside)
        col *= 255
        out[..., c] = np.floor(col, out=col)
    return out
