"""flow_to_rgb: the Middlebury wheel, checked on known colours and against the official-model fixture's wheel."""

import importlib.util

import numpy as np
import pytest

from pipeline.flow.render import RENDER_VERSION, colour_wheel, flow_to_rgb
from tests.conftest import SHARED_DIR

FIXTURE = SHARED_DIR / "fixtures" / "official_hmhi" / "make_inputs.py"


def _one(dx, dy, max_radius=None):
    return tuple(int(c) for c in flow_to_rgb(np.array([[[dx, dy]]], np.float32), max_radius)[0, 0])


def test_known_colours_on_the_unit_circle():
    # Middlebury convention: +x (right) is red, -x cyan-blue, +y (down) orange-yellow, -y violet.
    assert _one(1, 0) == (255, 0, 0)
    assert _one(-1, 0) == (0, 209, 255)
    assert _one(0, 1) == (255, 229, 0)
    assert _one(0, -1) == (88, 0, 255)
    assert _one(0, 0) == (255, 255, 255)  # no motion: white


def test_saturation_follows_magnitude_and_clips_outside_the_radius():
    half = _one(5, 0, max_radius=10)
    assert half == (255, 127, 127)  # half-way to red, floor(255 * (1 - 0.5 * (1 - 0)))
    assert _one(20, 0, max_radius=10) == (191, 0, 0)  # beyond the radius: 75% of the wheel colour
    # Normalised by the sample's own largest magnitude: scaling the flow does not change the picture.
    rng = np.random.default_rng(0)
    flow = rng.normal(size=(8, 9, 2)).astype(np.float32)
    diff = flow_to_rgb(flow).astype(int) - flow_to_rgb(flow * 7.5).astype(int)
    assert np.abs(diff).max() <= 1  # equal up to the floor() of the uint8 conversion
    assert flow_to_rgb(flow).dtype == np.uint8 and flow_to_rgb(flow).shape == (8, 9, 3)


def test_wheel_has_55_colours_and_bad_input_is_refused():
    assert colour_wheel().shape == (55, 3)
    assert RENDER_VERSION
    with pytest.raises(ValueError, match="last axis"):
        flow_to_rgb(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="max_radius"):
        flow_to_rgb(np.zeros((4, 4, 2)), max_radius=-1.0)
    # Non-finite flow (a diverged model) renders as no motion instead of raising deep inside numpy.
    bad = np.zeros((2, 2, 2), np.float32)
    bad[0, 0] = np.nan
    assert (flow_to_rgb(bad) == 255).all()


def test_matches_the_fixture_reference_wheel_bit_for_bit():
    if not FIXTURE.exists():  # part of the CI contract: ../shared sits beside the checkout
        pytest.fail(f"shared official-model fixture missing: {FIXTURE}", pytrace=False)
    spec = importlib.util.spec_from_file_location("official_make_inputs", FIXTURE)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    clip = ref.make_clip(n_frames=3, size=96, radii=(30.0, 20.0), c0=(40.0, 50.0))
    uv = clip["flow_uv"].astype(np.float64)
    max_rad = float(np.sqrt((uv**2).sum(-1)).max())
    assert np.array_equal(flow_to_rgb(uv, max_rad), ref.flow_to_rgb(uv, max_rad))
    # Dense check over all directions and magnitudes, inside and outside the unit disc.
    g = np.linspace(-1.6, 1.6, 101)
    grid = np.stack(np.meshgrid(g, g), -1)
    assert np.array_equal(flow_to_rgb(grid, 1.0), ref.flow_to_rgb(grid, 1.0))
    # Stored flows (float16, leading clip axis) at small and large scales, with the default radius: the
    # in-place per-channel arithmetic must not change a single pixel.
    rng = np.random.default_rng(7)
    for scale in (0.05, 3.0, 80.0):
        for flow in (
            rng.standard_normal((2, 37, 53, 2)) * scale,
            (rng.standard_normal((45, 61, 2)) * scale).astype(np.float16),
        ):
            as64 = flow.astype(np.float64)
            default = float(np.sqrt((as64**2).sum(-1)).max())
            assert np.array_equal(flow_to_rgb(flow), ref.flow_to_rgb(as64, default))
