"""A deterministic synthetic UVOS corpus in DAVIS-2016 layout, for demos, tests and ablations.

Each video is one procedural scene with a known ground-truth mask, rendered with vectorised NumPy:

- **background**: multi-octave value noise mapped to a muted palette, with faint gratings (texture, never flat
  colour nor white noise), seen by a camera that **pans** and **zooms**;
- **distractors** that move but are *not* foreground: a band of texture drifting along its own axis (a river, a
  conveyor) and a few small pieces of clutter moving on their own straight paths;
- **the primary object**: a saturated, textured (stripes / rings / spots / checks) blob whose outline deforms
  (time-varying harmonics of its radius), which rotates and travels on a smooth path; for a window of frames it
  **pauses** (its world position, angle and shape freeze, so its motion relative to the background vanishes and only
  memory can carry it);
- **a pole** in front of the object that belongs to the background (mask 0): the object passes behind it, so it is
  **partially occluded** for some frames;
- **lighting**: a global gain and colour-tint ramp plus a drifting spatial gradient, then light sensor noise.

The mask is the object's visible coverage (object alpha times one minus the pole's alpha) at >= 0.5, written as a
DAVIS-2016 0/255 greyscale PNG. Layout under the output root (any :mod:`pipeline.storage` URL)::

    JPEGImages/480p/<seq>/00000.jpg        frames (the folder is called 480p whatever --size is, as DAVIS names it)
    Annotations/480p/<seq>/00000.png       0/255 'L' masks, one per frame
    ImageSets/480p/train.txt, val.txt      DAVIS-2016 split files: "/JPEGImages/480p/<seq>/00000.jpg /Annotations/..."
    ImageSets/2016/train.txt, val.txt      DAVIS-2017-layout split files: one sequence name per line
    Meta/<seq>/meta.json                   paused and occluded frame indices, per-frame occlusion, scene parameters
    videos/<seq>.mp4                       with --mp4 (PyAV)
    synthetic.json                         the generator config and the sequence list (written last)

Video ``i`` depends only on ``(seed, i)`` and the rendering settings, so a larger corpus extends a smaller one. A
sequence's ``meta.json`` is written after its frames and masks, so a rerun skips finished sequences and redoes
interrupted ones.

    python -m pipeline.synthetic runs/synth --videos 24 --frames 24 --size 128x128 --seed 0 [--mp4]
"""

from __future__ import annotations

import enum
import functools
import hashlib
import io
import json
import logging
import math
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pipeline.cli import run_job_main
from pipeline.config import config_to_dict, parse_job_args, require
from pipeline.errors import JobFailed, UserError
from pipeline.runtime import setup_logging
from pipeline.storage import Storage, open_storage
from pipeline.summary import JobSummary
from pipeline.video import encode_video

log = logging.getLogger(__name__)

__all__ = [
    "GENERATOR_VERSION",
    "RES_DIR",
    "SceneParams",
    "SyntheticConfig",
    "SyntheticCorpusError",
    "generate_corpus",
    "main",
    "render_video",
    "sample_scene",
    "sequence_names",
    "split_sequences",
]

GENERATOR_VERSION = 1
"""Bumped whenever the rendering changes, so that a rerun never mixes videos from two generator versions."""

RES_DIR = "480p"
"""DAVIS resolution folder name; kept as '480p' whatever the real size, because DAVIS-2016 readers expect it."""

_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")
_SEQ_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class SyntheticCorpusError(UserError, RuntimeError):
    """The output location cannot take this corpus (it holds one made with other settings); names the file."""


# -- configuration ---------------------------------------------------------------------------------------------------


@dataclass
class SyntheticConfig:
    out: str = ""
    """Output root: a local directory, file:// or s3://bucket/prefix URL (created if missing)."""
    videos: int = 24
    """Number of videos (sequences) to generate."""
    frames: int = 24
    """Frames per video (at least 6, so that a pause and an occlusion fit)."""
    size: str = "128x128"
    """Frame size as HEIGHTxWIDTH, e.g. '128x128' or '480x854'."""
    seed: int = 0
    """Corpus seed; video i is a pure function of (seed, i) and the rendering settings."""
    val_fraction: float = 0.25
    """Fraction of the videos held out (DAVIS 'val' list; ingest reads it as the test split). At least one video
    each way when videos >= 2."""
    prefix: str = "synth"
    """Sequence names are <prefix><index>, zero-padded to at least 3 digits."""
    jpeg_quality: int = 92
    """JPEG quality of the frames (DAVIS frames are JPEGs)."""
    noise_sigma: float = 2.0
    """Standard deviation of the Gaussian sensor noise, in 0-255 grey levels (0 disables it)."""
    clutter: int = 4
    """Most small moving background distractors per video (each video draws 1..clutter; 0 disables them)."""
    band: bool = True
    """Draw the drifting background texture band (a moving distractor that is not foreground)."""
    mp4: bool = False
    """Also write videos/<seq>.mp4 with PyAV."""
    mp4_codec: str = "libx264"
    """Video codec for --mp4: 'libx264' or 'mpeg4'."""
    fps: int = 24
    """Frame rate written into the mp4 files."""
    overwrite: bool = False
    """Regenerate sequences that already exist (otherwise finished sequences are skipped)."""

    def __post_init__(self):
        require(self.videos >= 1, "videos", self.videos, "must be >= 1")
        require(self.frames >= 6, "frames", self.frames, "must be >= 6 (a pause and an occlusion must fit)")
        m = _SIZE_RE.match(str(self.size))
        require(m is not None, "size", self.size, "must look like HEIGHTxWIDTH, e.g. 128x128")
        h, w = int(m.group(1)), int(m.group(2))
        require(
            32 <= h <= 4096 and 32 <= w <= 4096, "size", self.size, "height and width must be in [32, 4096]"
        )
        require(0.0 <= self.val_fraction < 1.0, "val_fraction", self.val_fraction, "must be in [0, 1)")
        require(
            bool(_SEQ_NAME_RE.match(self.prefix)),
            "prefix",
            self.prefix,
            "must start with a letter or digit and hold only letters, digits, '_' and '-'",
        )
        require(1 <= self.jpeg_quality <= 100, "jpeg_quality", self.jpeg_quality, "must be in [1, 100]")
        require(0.0 <= self.noise_sigma <= 50.0, "noise_sigma", self.noise_sigma, "must be in [0, 50]")
        require(0 <= self.clutter <= 32, "clutter", self.clutter, "must be in [0, 32]")
        require(
            self.mp4_codec in ("libx264", "mpeg4"),
            "mp4_codec",
            self.mp4_codec,
            "must be 'libx264' or 'mpeg4'",
        )
        require(1 <= self.fps <= 240, "fps", self.fps, "must be in [1, 240]")

    @property
    def height(self) -> int:
        return int(_SIZE_RE.match(self.size).group(1))

    @property
    def width(self) -> int:
        return int(_SIZE_RE.match(self.size).group(2))

    def fingerprint(self) -> str:
        """Hash of everything that changes a video's pixels (not the count, split or mp4 settings)."""
        key = dict(
            version=GENERATOR_VERSION,
            frames=self.frames,
            size=[self.height, self.width],
            seed=self.seed,
            jpeg_quality=self.jpeg_quality,
            noise_sigma=self.noise_sigma,
            clutter=self.clutter,
            band=self.band,
        )
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def sequence_names(config: SyntheticConfig) -> list[str]:
    digits = max(3, len(str(config.videos - 1)))
    return [f"{config.prefix}{i:0{digits}d}" for i in range(config.videos)]


def split_sequences(names: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Disjoint (train, val) lists, chosen by a seeded permutation and kept in name order."""
    n = len(names)
    n_val = int(round(n * val_fraction))
    if n >= 2 and val_fraction > 0:
        n_val = min(max(n_val, 1), n - 1)
    order = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED])).permutation(n)
    val_idx = set(order[:n_val].tolist())
    train = [s for i, s in enumerate(names) if i not in val_idx]
    val = [s for i, s in enumerate(names) if i in val_idx]
    return train, val


# -- procedural textures ---------------------------------------------------------------------------------------------


class _ValueNoise:
    """Tileable value noise: a random lattice interpolated with smoothstep, in [-1, 1].

    ``f(x, y)`` has the shape of ``x`` for one channel, and ``x.shape + (channels,)`` otherwise.
    """

    def __init__(self, rng: np.random.Generator, spacing: float, channels: int = 1, period: int = 64):
        # The period is a power of two so that wrapping is a bitwise and; lattices are gathered flat (fast `take`).
        grid = rng.uniform(-1.0, 1.0, size=(period * period, channels)).astype(np.float32)
        self.grid = grid[:, 0] if channels == 1 else grid
        self.scale = np.float32(1.0 / spacing)
        self.period = period

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        gx = x * self.scale
        gy = y * self.scale
        fx0 = np.floor(gx)
        fy0 = np.floor(gy)
        fx = gx - fx0
        fy = gy - fy0
        wrap = self.period - 1
        ix = fx0.astype(np.int32) & wrap
        iy = fy0.astype(np.int32) & wrap
        ix1 = (ix + 1) & wrap
        row0 = iy * self.period
        row1 = ((iy + 1) & wrap) * self.period
        sx = fx * fx * (3 - 2 * fx)
        sy = fy * fy * (3 - 2 * fy)
        g = self.grid
        if g.ndim == 2:
            sx, sy = sx[..., None], sy[..., None]
        a, b = g.take(row0 + ix, axis=0), g.take(row0 + ix1, axis=0)
        c, d = g.take(row1 + ix, axis=0), g.take(row1 + ix1, axis=0)
        top = a + (b - a) * sx
        bottom = c + (d - c) * sx
        return top + (bottom - top) * sy


class _Fbm:
    """Fractal sum of value-noise octaves (each half the spacing and ``gain`` times the amplitude of the last)."""

    def __init__(
        self, rng: np.random.Generator, spacing: float, octaves: int, channels: int = 1, gain: float = 0.5
    ):
        self.octaves = [_ValueNoise(rng, spacing / 2**k, channels) for k in range(octaves)]
        self.amps = [gain**k for k in range(octaves)]
        self.norm = sum(self.amps)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = 0.0
        for amp, octave in zip(self.amps, self.octaves):
            out = out + np.float32(amp) * octave(x, y)
        return out / np.float32(self.norm)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (all in [0, 1]) as float32 RGB."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.asarray(rgb, np.float32)


def _muted(rng: np.random.Generator) -> np.ndarray:
    return _hsv(rng.uniform(), rng.uniform(0.08, 0.4), rng.uniform(0.3, 0.7))


def _saturated(rng: np.random.Generator) -> np.ndarray:
    return _hsv(rng.uniform(), rng.uniform(0.55, 0.95), rng.uniform(0.6, 0.95))


def _edge_alpha(signed_px: np.ndarray) -> np.ndarray:
    """Coverage from a signed distance in pixels (positive inside), anti-aliased over one pixel."""
    return np.clip(signed_px + 0.5, 0.0, 1.0).astype(np.float32)


# -- scene parameters ------------------------------------------------------------------------------------------------


@dataclass
class SceneParams:
    """Everything that defines one video, drawn by :func:`sample_scene` (JSON-serialisable; saved in meta.json).

    World units are pixels at zoom 1. A frame pixel (col, row) shows the world point
    ``cam(t) + ((col, row) - image centre) / zoom(t)``.
    """

    height: int
    width: int
    frames: int
    texture_seed: int
    """Seed of the texture lattices and of the sensor noise."""
    cam_start: list[float]
    cam_velocity: list[float]
    """Camera pan, world units per frame."""
    cam_shake: list[float]
    """Amplitude (x, y), angular frequency and phase of a small sinusoidal camera shake."""
    zoom_rate: float
    """zoom(t) = exp(zoom_rate * t)."""
    obj_radius: float
    obj_aspect: float
    obj_harmonics: list[list[float]]
    """Outline harmonics: [k, amplitude, phase, angular rate] each; radius *= 1 + sum a sin(k phi + p + w tau)."""
    obj_path: list[float]
    """Screen-offset path: ax, wx, px, ay, wy, py, ox, oy (offset = o + a sin(w tau + p) per axis)."""
    obj_angle0: float
    obj_spin: float
    """Rotation rate of the object, radians per frame."""
    obj_pattern: str
    """Object texture family: 'stripes', 'rings', 'spots' or 'checks'."""
    obj_pattern_freq: float
    obj_pattern_angle: float
    pause: list[int]
    """[first, last] frame (inclusive) of the pause: the object's world state is the same in all of them."""
    pole_point: list[float]
    pole_normal: list[float]
    pole_half_width: float
    pole_speed: float
    """The pole moves along its normal at this speed (world units per frame); pole_point is where it is at
    occlusion_frame."""
    occlusion_frame: int
    """Frame at which the pole's centre line crosses the object's centre (give or take an offset)."""
    band_point: list[float]
    band_angle: float
    band_half_width: float
    band_speed: float
    clutter: list[list[float]]
    """Small distractors: [x0, y0, vx, vy, radius, squareness, angle] in world units."""
    light_gain: float
    light_tint: list[float]
    light_ramp: list[float]
    """Start frame and duration of the gain/tint ramp."""
    light_gradient: list[float]
    """Strength, initial angle and angular rate of a spatial light gradient."""


def _object_time(t: np.ndarray, pause: Sequence[int]) -> np.ndarray:
    """The object's own clock: frozen during the pause, then resumed where it stopped."""
    first, last = pause
    t = np.asarray(t, np.float64)
    return np.where(t <= first, t, np.where(t <= last, first, t - (last - first)))


def _camera(p: SceneParams | _Motion, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.asarray(t, np.float64)
    ax, ay, w, ph = p.cam_shake
    cx = p.cam_start[0] + p.cam_velocity[0] * t + ax * np.sin(w * t + ph)
    cy = p.cam_start[1] + p.cam_velocity[1] * t + ay * np.cos(w * t + ph)
    return cx, cy, np.exp(p.zoom_rate * t)


def _object_centre(p: SceneParams | _Motion, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World centre of the object at object-time ``tau``: the camera at tau plus the screen path, unzoomed."""
    ax, wx, px, ay, wy, py, ox, oy = p.obj_path
    cx, cy, zoom = _camera(p, tau)
    return cx + (ox + ax * np.sin(wx * tau + px)) / zoom, cy + (oy + ay * np.sin(wy * tau + py)) / zoom


@dataclass
class _Motion:
    """The camera and path fields of :class:`SceneParams`: enough to place the object while a scene is being drawn."""

    cam_start: Sequence[float]
    cam_velocity: Sequence[float]
    cam_shake: Sequence[float]
    zoom_rate: float
    obj_path: Sequence[float]


def sample_scene(
    seed: int, index: int, height: int, width: int, frames: int, clutter: int = 4, band: bool = True
) -> SceneParams:
    """Draw the parameters of video ``index`` of the corpus with seed ``seed`` (pure function of its arguments).

    One generator draws everything, part by part in this order; reordering the draws changes every corpus.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 0x0B1EC7]))
    dim = float(min(height, width))
    unit = dim / 128.0  # speeds are tuned at 128 px and scale with the frame
    camera = _sample_camera(rng, frames, unit)
    obj = _sample_object(rng, height, width, dim, unit)
    pause = _sample_pause(rng, frames)
    motion = _Motion(
        camera["cam_start"], camera["cam_velocity"], camera["cam_shake"], camera["zoom_rate"], obj["obj_path"]
    )
    pole = _sample_pole(rng, motion, pause, obj["obj_radius"], frames, unit)
    cam0 = np.asarray(camera["cam_start"])
    band_params = _sample_band(rng, cam0, height, width, dim, unit, band)
    items = _sample_clutter(rng, cam0, np.asarray(camera["cam_velocity"]), height, width, dim, unit, clutter)
    light = _sample_light(rng, frames)
    return SceneParams(
        height=height,
        width=width,
        frames=frames,
        texture_seed=int(rng.integers(0, 2**31 - 1)),
        **camera,
        **obj,
        obj_angle0=float(rng.uniform(0, 2 * math.pi)),
        obj_pattern_freq=float(rng.uniform(1.5, 3.5)),
        obj_pattern_angle=float(rng.uniform(0, math.pi)),
        pause=pause,
        **pole,
        **band_params,
        clutter=items,
        **light,
    )


def _floats(a) -> list[float]:
    return [float(v) for v in np.asarray(a).ravel()]


def _direction(rng: np.random.Generator) -> np.ndarray:
    a = rng.uniform(0, 2 * math.pi)
    return np.array([math.cos(a), math.sin(a)])


def _sample_camera(rng: np.random.Generator, frames: int, unit: float) -> dict[str, Any]:
    """Pan, shake and zoom of the camera (the ``cam_*`` and ``zoom_rate`` fields)."""
    cam_start = rng.uniform(-1000, 1000, size=2)
    cam_velocity = _direction(rng) * rng.uniform(0.3, 1.5) * unit
    cam_shake = [
        rng.uniform(0, 0.8) * unit,
        rng.uniform(0, 0.8) * unit,
        rng.uniform(0.3, 0.9),
        rng.uniform(0, 6.3),
    ]
    zoom_total = math.exp(rng.uniform(math.log(0.8), math.log(1.3)))
    zoom_rate = math.log(zoom_total) / (frames - 1)
    return {
        "cam_start": _floats(cam_start),
        "cam_velocity": _floats(cam_velocity),
        "cam_shake": _floats(cam_shake),
        "zoom_rate": float(zoom_rate),
    }


def _sample_object(
    rng: np.random.Generator, height: int, width: int, dim: float, unit: float
) -> dict[str, Any]:
    """The object's outline, screen path, spin and texture family (the ``obj_*`` fields drawn before the pause)."""
    radius = rng.uniform(0.18, 0.28) * dim
    aspect = rng.uniform(1.0, 1.5)
    n_harm = int(rng.integers(1, 4))
    ks = rng.choice(np.arange(2, 7), size=n_harm, replace=False)
    harmonics = [
        [float(k), rng.uniform(0.03, 0.12), rng.uniform(0, 2 * math.pi), rng.uniform(-0.25, 0.25)] for k in ks
    ]
    # Screen path: keep the centre inside the central part of the frame.
    max_ax = max(0.5 * width - 0.9 * radius, 0.05 * width)
    max_ay = max(0.5 * height - 0.9 * radius, 0.05 * height)
    ax, ay = rng.uniform(0.45, 0.95) * max_ax, rng.uniform(0.25, 0.8) * max_ay
    ox = rng.uniform(-0.3, 0.3) * (max_ax - ax)
    oy = rng.uniform(-0.3, 0.3) * (max_ay - ay)
    # Angular rates such that the peak screen speed is ~2-5 px/frame at 128 px.
    wx = rng.uniform(2.0, 4.5) * unit / max(ax, 1e-3) * rng.choice([-1, 1])
    wy = rng.uniform(1.0, 3.0) * unit / max(ay, 1e-3) * rng.choice([-1, 1])
    path = [ax, wx, rng.uniform(0, 2 * math.pi), ay, wy, rng.uniform(0, 2 * math.pi), ox, oy]
    spin = rng.uniform(0.02, 0.08) * rng.choice([-1, 1])
    pattern = str(rng.choice(["stripes", "rings", "spots", "checks"]))
    return {
        "obj_radius": float(radius),
        "obj_aspect": float(aspect),
        "obj_harmonics": [_floats(h) for h in harmonics],
        "obj_path": _floats(path),
        "obj_spin": float(spin),
        "obj_pattern": pattern,
    }


def _sample_pause(rng: np.random.Generator, frames: int) -> list[int]:
    """[first, last] frame of the pause: ~20% of the clip, somewhere in its middle third-ish, never at frame 0."""
    pause_len = max(2, int(round(frames * rng.uniform(0.17, 0.25))))
    first = int(rng.integers(max(1, int(0.3 * frames)), max(2, int(0.65 * frames) - pause_len + 2)))
    first = min(first, frames - pause_len - 1)
    return [first, first + pause_len - 1]


def _sample_pole(
    rng: np.random.Generator, motion: _Motion, pause: list[int], radius: float, frames: int, unit: float
) -> dict[str, Any]:
    """The occluding pole (the ``pole_*`` fields and ``occlusion_frame``).

    A pole (a swinging branch, a passing post) sweeps across the object's centre at frame t_occ, outside the pause,
    fast enough that the occlusion lasts a few frames only.
    """
    candidates = [t for t in range(1, frames - 1) if t < pause[0] - 1 or t > pause[1] + 1] or list(
        range(1, frames - 1)
    )
    t_occ = int(rng.choice(candidates))
    tau = _object_time(np.array([t_occ - 1, t_occ, t_occ + 1]), pause)
    cx, cy = _object_centre(motion, tau)
    vel = np.array([cx[2] - cx[0], cy[2] - cy[0]])
    normal = vel / np.linalg.norm(vel) if np.linalg.norm(vel) > 1e-3 else _direction(rng)
    normal = normal + rng.normal(0, 0.25, size=2)  # not exactly across the motion
    normal = normal / np.linalg.norm(normal)
    offset = rng.uniform(-0.25, 0.25) * radius
    pole_point = np.array([cx[1], cy[1]]) + normal * offset
    pole_half_width = rng.uniform(0.22, 0.38) * radius
    crossing_frames = rng.uniform(0.2, 0.35) * frames
    pole_speed = float(np.clip((2 * radius + 2 * pole_half_width) / crossing_frames, 2.0 * unit, 14.0 * unit))
    pole_speed *= rng.choice([-1, 1])
    return {
        "pole_point": _floats(pole_point),
        "pole_normal": _floats(normal),
        "pole_half_width": float(pole_half_width),
        "pole_speed": pole_speed,
        "occlusion_frame": t_occ,
    }


def _sample_band(
    rng: np.random.Generator, cam0: np.ndarray, height: int, width: int, dim: float, unit: float, band: bool
) -> dict[str, Any]:
    """The drifting background band (the ``band_*`` fields; zero width without ``band``)."""
    band_point = cam0 + np.array([rng.uniform(-0.3, 0.3) * width, rng.uniform(-0.3, 0.3) * height])
    band_angle = rng.uniform(-0.5, 0.5) + (math.pi / 2 if rng.uniform() < 0.3 else 0.0)
    band_half_width = rng.uniform(0.07, 0.13) * dim if band else 0.0
    band_speed = rng.uniform(1.0, 3.0) * unit * rng.choice([-1, 1])
    return {
        "band_point": _floats(band_point),
        "band_angle": float(band_angle),
        "band_half_width": float(band_half_width),
        "band_speed": float(band_speed),
    }


def _sample_clutter(
    rng: np.random.Generator,
    cam0: np.ndarray,
    cam_velocity: np.ndarray,
    height: int,
    width: int,
    dim: float,
    unit: float,
    clutter: int,
) -> list[list[float]]:
    """1..``clutter`` small distractors, each [x0, y0, vx, vy, radius, squareness, angle] (none for 0)."""
    items = []
    for _ in range(int(rng.integers(1, clutter + 1)) if clutter > 0 else 0):
        pos = cam0 + np.array([rng.uniform(-0.45, 0.45) * width, rng.uniform(-0.45, 0.45) * height])
        vel = _direction(rng) * rng.uniform(0.5, 2.5) * unit + cam_velocity * rng.uniform(0, 1)
        items.append([*pos, *vel, rng.uniform(0.025, 0.055) * dim, rng.uniform(), rng.uniform(0, math.pi)])
    return [_floats(c) for c in items]


def _sample_light(rng: np.random.Generator, frames: int) -> dict[str, Any]:
    """The lighting change: a gain/tint ramp and a drifting spatial gradient (the ``light_*`` fields)."""
    gain = rng.uniform(0.6, 0.8) if rng.uniform() < 0.5 else rng.uniform(1.15, 1.35)
    tint = rng.uniform(-0.1, 0.1, size=3)
    ramp_start = rng.uniform(0, 0.6) * frames
    ramp_len = rng.uniform(0.2, 0.4) * frames
    gradient = [rng.uniform(0.05, 0.3), rng.uniform(0, 2 * math.pi), rng.uniform(-0.05, 0.05)]
    return {
        "light_gain": float(gain),
        "light_tint": _floats(tint),
        "light_ramp": [float(ramp_start), float(ramp_len)],
        "light_gradient": _floats(gradient),
    }


# -- rendering -------------------------------------------------------------------------------------------------------


@dataclass
class _Textures:
    """Texture lattices and colours of one video, built from ``texture_seed``."""

    bg_shape: _Fbm
    bg_colour: _Fbm
    bg_fine: _ValueNoise
    bg_palette: np.ndarray
    bg_gratings: list[tuple[float, float, float, np.ndarray]]
    band_noise: _Fbm
    band_palette: np.ndarray
    band_period: float
    obj_noise: _Fbm
    obj_palette: np.ndarray
    pole_noise: _ValueNoise
    pole_palette: np.ndarray
    clutter_palettes: list[np.ndarray]
    noise_seed: int = field(default=0)


def _build_textures(p: SceneParams) -> _Textures:
    rng = np.random.default_rng(np.random.SeedSequence([p.texture_seed, 0x7E47]))
    dim = float(min(p.height, p.width))
    gratings = []
    for _ in range(2):
        period = rng.uniform(0.08, 0.3) * dim
        a = rng.uniform(0, math.pi)
        gratings.append(
            (
                2 * math.pi / period * math.cos(a),
                2 * math.pi / period * math.sin(a),
                rng.uniform(0, 2 * math.pi),
                rng.uniform(-1, 1, size=3).astype(np.float32) * 0.04,
            )
        )
    return _Textures(
        bg_shape=_Fbm(rng, rng.uniform(0.35, 0.7) * dim, 4),
        bg_colour=_Fbm(rng, rng.uniform(0.4, 0.9) * dim, 2, channels=3),
        bg_fine=_ValueNoise(rng, rng.uniform(1.5, 4.0) * dim / 128, 1),
        bg_palette=np.stack([_muted(rng) for _ in range(3)]),
        bg_gratings=gratings,
        band_noise=_Fbm(rng, rng.uniform(0.1, 0.25) * dim, 3),
        band_palette=np.stack([_muted(rng), _muted(rng)]),
        band_period=rng.uniform(0.08, 0.2) * dim,
        obj_noise=_Fbm(rng, 0.35, 2, channels=1),  # in object units (radius 1)
        obj_palette=np.stack([_saturated(rng), _saturated(rng)]),
        pole_noise=_ValueNoise(rng, 1.0, 1),
        pole_palette=np.stack(
            [
                _hsv(rng.uniform(0.02, 0.12), rng.uniform(0.2, 0.5), rng.uniform(0.15, 0.35)),
                _hsv(rng.uniform(0.02, 0.12), rng.uniform(0.2, 0.5), rng.uniform(0.35, 0.55)),
            ]
        ),
        clutter_palettes=[np.stack([_muted(rng), _muted(rng)]) for _ in range(len(p.clutter))],
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )


def _lerp(a: np.ndarray, b: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return a + (b - a) * alpha[..., None]


def _mix(palette: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Blend two palette colours by ``weight`` in [0, 1] -> (..., 3)."""
    return palette[0] + (palette[1] - palette[0]) * weight[..., None]


def _background(tx: _Textures, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
    """The static background at world points: palette chosen by large-scale fBm, colour drift, grain, gratings."""
    f32 = np.float32
    w01 = np.clip(tx.bg_shape(wx, wy) * f32(0.8) + f32(0.5), 0, 1)
    pal = tx.bg_palette
    img = np.where(
        (w01 < 0.5)[..., None],
        _mix(pal[:2], np.clip(w01 * 2, 0, 1)),
        _mix(pal[1:], np.clip(w01 * 2 - 1, 0, 1)),
    )
    img = img + f32(0.12) * tx.bg_colour(wx, wy) + f32(0.05) * tx.bg_fine(wx, wy)[..., None]
    for kx, ky, ph, col in tx.bg_gratings:
        img = img + np.sin(f32(kx) * wx + f32(ky) * wy + f32(ph))[..., None] * col
    return img.astype(f32)


class _BakedBackground:
    """The static background evaluated once on a world grid covering every frame's view, then resampled per frame.

    The camera only pans and zooms, so each frame sees a window of one static picture; evaluating the noise once on
    a grid at the finest zoom's pixel pitch and resampling it bilinearly (OpenCV ``remap``) is several times
    cheaper than evaluating every octave at every pixel of every frame.
    """

    def __init__(self, p: SceneParams, tx: _Textures):
        t = np.arange(p.frames)
        cx, cy, zoom = _camera(p, t)
        half_w, half_h = (p.width + 1) / 2.0 / zoom, (p.height + 1) / 2.0 / zoom
        margin = 2.0
        self.x0 = float(np.min(cx - half_w)) - margin
        self.y0 = float(np.min(cy - half_h)) - margin
        x1 = float(np.max(cx + half_w)) + margin
        y1 = float(np.max(cy + half_h)) + margin
        self.step = 1.0 / float(np.max(zoom))  # one grid cell per output pixel at the largest zoom
        nx = int(math.ceil((x1 - self.x0) / self.step)) + 1
        ny = int(math.ceil((y1 - self.y0) / self.step)) + 1
        gy, gx = np.mgrid[0:ny, 0:nx].astype(np.float32)
        self.image = _background(
            tx,
            gx * np.float32(self.step) + np.float32(self.x0),
            gy * np.float32(self.step) + np.float32(self.y0),
        )

    def sample(self, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
        import cv2

        mx = ((wx - np.float32(self.x0)) / np.float32(self.step)).astype(np.float32)
        my = ((wy - np.float32(self.y0)) / np.float32(self.step)).astype(np.float32)
        return np.stack(
            [
                cv2.remap(
                    self.image, mx[i], my[i], interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
                )
                for i in range(wx.shape[0])
            ]
        )


@dataclass
class _Grid:
    """Where every pixel of a chunk of frames looks: screen offsets and world coordinates, (T, H, W) or broadcastable."""

    t: np.ndarray
    """The frames (1-D int array)."""
    sx: np.ndarray
    """Screen x offset from the image centre, (1, H, W)."""
    sy: np.ndarray
    """Screen y offset from the image centre, (1, H, W)."""
    wx: np.ndarray
    """World x of every pixel, (T, H, W)."""
    wy: np.ndarray
    """World y of every pixel, (T, H, W)."""
    zoom: np.ndarray
    """Camera zoom per frame, (T, 1, 1): world lengths times zoom are pixels."""
    tt: np.ndarray
    """The frame numbers as float32, (T, 1, 1)."""


def _grid(p: SceneParams, t: np.ndarray) -> _Grid:
    H, W = p.height, p.width
    f32 = np.float32
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float32)
    sx = (cols - (W - 1) / 2.0)[None]
    sy = (rows - (H - 1) / 2.0)[None]
    cx, cy, zoom = _camera(p, t)
    zoom3 = zoom.astype(f32)[:, None, None]
    wx = cx.astype(f32)[:, None, None] + sx / zoom3
    wy = cy.astype(f32)[:, None, None] + sy / zoom3
    return _Grid(t, sx, sy, wx, wy, zoom3, t.astype(f32)[:, None, None])


def _render_chunk(
    p: SceneParams, tx: _Textures, background: _BakedBackground, t: np.ndarray, draw_object: bool
) -> dict[str, np.ndarray]:
    """Render frames ``t`` (1-D int array) -> float RGB in [0, 1] (before noise), object and pole alphas.

    Back to front: the background, the drifting band, the clutter, the object, the pole; then the lighting.
    """
    g = _grid(p, t)
    img = background.sample(g.wx, g.wy)
    if p.band_half_width > 0:
        img = _draw_band(img, p, tx, g)
    img = _draw_clutter(img, p, tx, g)
    img, a_obj = _draw_object(img, p, tx, g, draw_object)
    img, a_pole = _draw_pole(img, p, tx, g)
    img = _light(img, p, g)
    return {"image": img, "object_alpha": a_obj, "pole_alpha": a_pole}


def _draw_band(img: np.ndarray, p: SceneParams, tx: _Textures, g: _Grid) -> np.ndarray:
    """Drifting band: texture that slides along the band's axis (not foreground)."""
    f32 = np.float32
    ca, sa = math.cos(p.band_angle), math.sin(p.band_angle)
    dx, dy = g.wx - f32(p.band_point[0]), g.wy - f32(p.band_point[1])
    along = dx * f32(ca) + dy * f32(sa) - f32(p.band_speed) * g.tt
    across = -dx * f32(sa) + dy * f32(ca)
    a_band = _edge_alpha((f32(p.band_half_width) - np.abs(across)) * g.zoom)
    ripple = 0.5 + 0.5 * np.sin(f32(2 * math.pi / tx.band_period) * along + f32(0.15) * across)
    weight = np.clip(0.6 * ripple + 0.5 * tx.band_noise(along, across * 2.5) + 0.2, 0, 1)
    return _lerp(img, _mix(tx.band_palette, weight), a_band)


def _draw_clutter(img: np.ndarray, p: SceneParams, tx: _Textures, g: _Grid) -> np.ndarray:
    """Small clutter, each on its own straight world path (not foreground)."""
    f32 = np.float32
    for item, palette in zip(p.clutter, tx.clutter_palettes):
        x0, y0, vx, vy, r, square, ang = item
        dx = g.wx - f32(x0 + 0) - f32(vx) * g.tt
        dy = g.wy - f32(y0) - f32(vy) * g.tt
        u = dx * f32(math.cos(ang)) + dy * f32(math.sin(ang))
        v = -dx * f32(math.sin(ang)) + dy * f32(math.cos(ang))
        n = f32(2 + 6 * square)  # superellipse exponent: 2 is a disc, 8 a rounded square
        dist = (np.abs(u) ** n + np.abs(v) ** n) ** (1 / n)
        a_item = _edge_alpha((f32(r) - dist) * g.zoom)
        stripes = 0.5 + 0.5 * np.sin(u * f32(2 * math.pi / max(r * 0.8, 1.0)))
        img = _lerp(img, _mix(palette, stripes), a_item)
    return img


def _draw_object(
    img: np.ndarray, p: SceneParams, tx: _Textures, g: _Grid, draw_object: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The object, in its own clock tau (frozen during the pause) -> (image, object alpha)."""
    f32 = np.float32
    tau = _object_time(g.t, p.pause)
    ocx, ocy = _object_centre(p, tau)
    theta = (p.obj_angle0 + p.obj_spin * tau).astype(f32)[:, None, None]
    dx = g.wx - ocx.astype(f32)[:, None, None]
    dy = g.wy - ocy.astype(f32)[:, None, None]
    u = np.cos(theta) * dx + np.sin(theta) * dy
    v = -np.sin(theta) * dx + np.cos(theta) * dy
    rho = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    asp = math.sqrt(p.obj_aspect)
    ellipse = 1.0 / np.sqrt((np.cos(phi) * f32(1 / asp)) ** 2 + (np.sin(phi) * f32(asp)) ** 2 + f32(1e-12))
    wobble = 1.0
    tau3 = tau.astype(f32)[:, None, None]
    for k, amp, ph, rate in p.obj_harmonics:
        wobble = wobble + f32(amp) * np.sin(f32(k) * phi + f32(ph) + f32(rate) * tau3)
    outline = f32(p.obj_radius) * ellipse * wobble
    a_obj = _edge_alpha((outline - rho) * g.zoom) if draw_object else np.zeros_like(rho)
    pattern = _object_pattern(p, tx, u / f32(p.obj_radius), v / f32(p.obj_radius))
    shade = 1.0 - 0.35 * np.clip(rho / np.maximum(outline, 1e-3), 0, 1) ** 2  # darker towards the rim
    return _lerp(img, _mix(tx.obj_palette, pattern) * shade[..., None], a_obj), a_obj


def _object_pattern(p: SceneParams, tx: _Textures, un: np.ndarray, vn: np.ndarray) -> np.ndarray:
    """The object's texture weight in [0, 1] at object coordinates (radius 1)."""
    f32 = np.float32
    freq = f32(p.obj_pattern_freq)
    if p.obj_pattern == "stripes":
        ca, sa = f32(math.cos(p.obj_pattern_angle)), f32(math.sin(p.obj_pattern_angle))
        pattern = 0.5 + 0.5 * np.sin(f32(2 * math.pi) * freq * (un * ca + vn * sa))
    elif p.obj_pattern == "rings":
        pattern = 0.5 + 0.5 * np.sin(f32(2 * math.pi) * freq * np.sqrt(un * un + vn * vn))
    elif p.obj_pattern == "spots":
        pattern = np.clip(tx.obj_noise(un * freq, vn * freq) * 3 + 0.5, 0, 1)
    else:
        pattern = np.clip(np.sin(f32(math.pi) * freq * un) * np.sin(f32(math.pi) * freq * vn) * 4 + 0.5, 0, 1)
    return np.clip(pattern + 0.25 * tx.obj_noise(un * 2, vn * 2), 0, 1)


def _draw_pole(img: np.ndarray, p: SceneParams, tx: _Textures, g: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """The pole: part of the background, in front of the object, sweeping across the view -> (image, pole alpha)."""
    f32 = np.float32
    nx, ny = p.pole_normal
    shift = f32(p.pole_speed) * (g.tt - f32(p.occlusion_frame))
    across = (g.wx - f32(p.pole_point[0])) * f32(nx) + (g.wy - f32(p.pole_point[1])) * f32(ny) - shift
    along = -(g.wx - f32(p.pole_point[0])) * f32(ny) + (g.wy - f32(p.pole_point[1])) * f32(nx)
    a_pole = _edge_alpha((f32(p.pole_half_width) - np.abs(across)) * g.zoom)
    hw = max(p.pole_half_width, 1e-3)
    bark = np.clip(0.5 + 0.6 * tx.pole_noise(across / f32(hw * 0.3), along / f32(hw * 2.0)), 0, 1)
    roundness = 1.0 - 0.5 * np.clip(np.abs(across) / f32(hw), 0, 1) ** 2
    return _lerp(img, _mix(tx.pole_palette, bark) * roundness[..., None], a_pole), a_pole


def _light(img: np.ndarray, p: SceneParams, g: _Grid) -> np.ndarray:
    """Lighting: a gain/tint ramp and a drifting spatial gradient."""
    f32 = np.float32
    start, length = p.light_ramp
    ramp = np.clip((g.t - start) / max(length, 1e-3), 0, 1)
    ramp = (ramp * ramp * (3 - 2 * ramp)).astype(f32)[:, None, None, None]
    tint = np.asarray(p.light_tint, np.float32)
    light = (1 + (f32(p.light_gain) - 1) * ramp) * (1 + tint * ramp)
    strength, ang0, rate = p.light_gradient
    ang = (ang0 + rate * g.t).astype(f32)[:, None, None]
    grad = 1 + f32(strength) * (g.sx * np.cos(ang) + g.sy * np.sin(ang)) / f32(max(p.height, p.width))
    return img * light * grad[..., None]


def render_video(
    p: SceneParams, noise_sigma: float = 2.0, draw_object: bool = True, max_chunk_pixels: int = 2_000_000
) -> dict[str, np.ndarray]:
    """Render a whole video.

    Returns ``frames`` (T, H, W, 3) uint8 RGB, ``masks`` (T, H, W) bool (visible object coverage >= 0.5),
    ``object_alpha`` (the object's own coverage, before the pole) and ``visible_alpha`` (after it), float32.
    ``draw_object=False`` renders the same scene without the object (same noise), which tests use to check that
    the mask covers exactly where the object changed the picture.
    """
    tx = _build_textures(p)
    background = _BakedBackground(p, tx)
    per_chunk = max(1, max_chunk_pixels // (p.height * p.width))
    frames, obj, vis = [], [], []
    noise_rng = np.random.default_rng(np.random.SeedSequence([tx.noise_seed, 0x5E45]))
    for start in range(0, p.frames, per_chunk):
        t = np.arange(start, min(p.frames, start + per_chunk))
        out = _render_chunk(p, tx, background, t, draw_object)
        rgb = out["image"] * np.float32(255.0)
        if noise_sigma > 0:
            rgb = rgb + noise_rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(noise_sigma)
        frames.append(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
        obj.append(out["object_alpha"])
        vis.append(out["object_alpha"] * (1 - out["pole_alpha"]))
    visible = np.concatenate(vis)
    return {
        "frames": np.concatenate(frames),
        "masks": visible >= 0.5,
        "object_alpha": np.concatenate(obj),
        "visible_alpha": visible,
    }


def scene_meta(p: SceneParams, rendered: dict[str, np.ndarray], occluded_threshold: float = 0.1) -> dict:
    """Per-sequence facts for the ablation benchmark: paused frames, occluded frames, per-frame coverage."""
    full = rendered["object_alpha"].reshape(p.frames, -1).sum(1)
    visible = rendered["visible_alpha"].reshape(p.frames, -1).sum(1)
    occluded_fraction = np.where(full > 0, 1 - visible / np.maximum(full, 1e-6), 0.0)
    area = rendered["masks"].reshape(p.frames, -1).mean(1)
    return {
        "frames": p.frames,
        "paused_frames": list(range(p.pause[0], p.pause[1] + 1)),
        "occluded_frames": [int(i) for i in np.nonzero(occluded_fraction >= occluded_threshold)[0]],
        "occluded_threshold": occluded_threshold,
        "occluded_fraction": [round(float(x), 4) for x in occluded_fraction],
        "mask_area_fraction": [round(float(x), 4) for x in area],
        "notes": (
            "paused_frames: the object's world position, angle and shape are identical in all of these frames, "
            "so its motion relative to the background is zero between consecutive ones; occluded_frames: at "
            "least occluded_threshold of the object's area is hidden by the (background) pole"
        ),
    }


# -- encoding and writing --------------------------------------------------------------------------------------------


def _jpeg(frame: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _mask_png(mask: np.ndarray) -> bytes:
    """DAVIS-2016 ground truth: 8-bit greyscale, 0 background and 255 object."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def _mp4_bytes(frames: np.ndarray, fps: int, codec: str) -> bytes:
    buf = io.BytesIO()
    encode_video(frames, buf, fps=fps, codec=codec, container_format="mp4")
    return buf.getvalue()


def _seq_rel(kind: str, seq: str, name: str = "") -> str:
    return f"{kind}/{RES_DIR}/{seq}/{name}" if name else f"{kind}/{RES_DIR}/{seq}"


def _write_sequence(st, cfg: SyntheticConfig, seq: str, index: int) -> dict:
    params = sample_scene(cfg.seed, index, cfg.height, cfg.width, cfg.frames, cfg.clutter, cfg.band)
    rendered = render_video(params, cfg.noise_sigma)
    files = {}
    for t in range(cfg.frames):
        files[_seq_rel("JPEGImages", seq, f"{t:05d}.jpg")] = _jpeg(rendered["frames"][t], cfg.jpeg_quality)
        files[_seq_rel("Annotations", seq, f"{t:05d}.png")] = _mask_png(rendered["masks"][t])
    if cfg.mp4:
        files[f"videos/{seq}.mp4"] = _mp4_bytes(rendered["frames"], cfg.fps, cfg.mp4_codec)
    # Atomic writes wait on fsync (local) or a PUT (S3): overlap them.
    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(st.write_bytes, rel, data) for rel, data in files.items()]:
            future.result()
    meta = scene_meta(params, rendered)
    meta.update(
        sequence=seq,
        index=index,
        fingerprint=cfg.fingerprint(),
        generator_version=GENERATOR_VERSION,
        mp4=f"videos/{seq}.mp4" if cfg.mp4 else None,
        params=asdict(params),
    )
    st.write_json(f"Meta/{seq}/meta.json", meta)  # last: marks the sequence as complete
    return meta


def _existing_meta(st, seq: str) -> dict | None:
    rel = f"Meta/{seq}/meta.json"
    if not st.exists(rel):
        return None
    try:
        return st.read_json(rel)
    except (ValueError, OSError):
        return None  # a damaged marker: redo the sequence


def generate_corpus(cfg: SyntheticConfig) -> dict:
    """Write the corpus described by ``cfg`` to ``cfg.out``; returns the job summary dict."""
    require(bool(cfg.out), "out", cfg.out, "an output location is required")
    st = open_storage(cfg.out)
    st.check()
    summary = JobSummary("synthetic")
    names = sequence_names(cfg)
    train, val = split_sequences(names, cfg.val_fraction, cfg.seed)
    fingerprint = cfg.fingerprint()
    log.info(
        "synthetic corpus: %d videos x %d frames at %dx%d, seed %d -> %s",
        cfg.videos,
        cfg.frames,
        cfg.height,
        cfg.width,
        cfg.seed,
        st.url,
    )
    _check_manifest(st, cfg, fingerprint)
    written, mismatched = [], []
    for index, seq in enumerate(names):
        outcome = _generate_sequence(st, cfg, seq, index, len(names), fingerprint, summary)
        if outcome is _Outcome.MISMATCHED:
            mismatched.append(seq)
        elif outcome is _Outcome.WRITTEN:
            written.append(seq)
    if mismatched:
        # The split files and manifest describe the corpus on disk; never rewrite them around foreign sequences.
        log.error(
            "%d sequences under %s were made with other settings; split files left unchanged",
            len(mismatched),
            st.url,
        )
        return summary.finish()
    train = [s for s in train if s in written]
    val = [s for s in val if s in written]
    _write_splits_and_manifest(st, cfg, fingerprint, train, val)
    summary.add("train_videos", len(train))
    summary.add("val_videos", len(val))
    return summary.finish()


class _Outcome(enum.Enum):
    """What became of one sequence of the corpus."""

    WRITTEN = "written (now or by an earlier run)"
    MISMATCHED = "another corpus's sequence, left alone"
    REJECTED = "failed; the corpus goes on"


def _check_manifest(st: Storage, cfg: SyntheticConfig, fingerprint: str) -> None:
    """Refuse to add to a corpus made with other settings (unless ``overwrite``)."""
    if cfg.overwrite or not st.exists("synthetic.json"):
        return
    previous = st.read_json("synthetic.json")
    if previous.get("fingerprint") != fingerprint:
        raise SyntheticCorpusError(
            f"{st.join('synthetic.json')} holds a corpus made with different settings (fingerprint "
            f"{previous.get('fingerprint')} != {fingerprint}, config {previous.get('config')}); use a new output "
            "location or --overwrite"
        )


def _generate_sequence(
    st: Storage, cfg: SyntheticConfig, seq: str, index: int, total: int, fingerprint: str, summary: JobSummary
) -> _Outcome:
    """Write one sequence unless it is already there; says what became of it."""
    meta = None if cfg.overwrite else _existing_meta(st, seq)
    if meta is not None and meta.get("fingerprint") != fingerprint:
        summary.rejected(
            "video",
            seq,
            reason=(
                f"{st.join(f'Meta/{seq}/meta.json')} was made with different settings (fingerprint "
                f"{meta.get('fingerprint')} != {fingerprint}); use a new output location or --overwrite"
            ),
        )
        return _Outcome.MISMATCHED
    if meta is not None and (not cfg.mp4 or st.exists(f"videos/{seq}.mp4")):
        summary.skipped("video", seq, reason="already generated")
        return _Outcome.WRITTEN
    try:
        if cfg.overwrite:
            for kind in ("JPEGImages", "Annotations"):
                st.delete(_seq_rel(kind, seq), recursive=True)
        meta = _write_sequence(st, cfg, seq, index)
    except Exception as err:  # one bad video must not stop the corpus
        summary.rejected("video", seq, reason=f"{type(err).__name__}: {err}")
        return _Outcome.REJECTED
    summary.done("video", seq, frames=cfg.frames)
    log.info(
        "%s (%d/%d): paused %s, occluded %s",
        seq,
        index + 1,
        total,
        meta["paused_frames"],
        meta["occluded_frames"],
    )
    return _Outcome.WRITTEN


def _write_splits_and_manifest(
    st: Storage, cfg: SyntheticConfig, fingerprint: str, train: list[str], val: list[str]
) -> None:
    """The DAVIS split files (per frame and per sequence) and ``synthetic.json``, written last."""
    for split, seqs in (("train", train), ("val", val)):
        frame_lines = [
            f"/JPEGImages/{RES_DIR}/{s}/{t:05d}.jpg /Annotations/{RES_DIR}/{s}/{t:05d}.png"
            for s in seqs
            for t in range(cfg.frames)
        ]
        st.write_text(f"ImageSets/{RES_DIR}/{split}.txt", "".join(line + "\n" for line in frame_lines))
        st.write_text(f"ImageSets/2016/{split}.txt", "".join(s + "\n" for s in seqs))
    manifest = {
        "generator": "pipeline.synthetic",
        "generator_version": GENERATOR_VERSION,
        "fingerprint": fingerprint,
        "config": {k: v for k, v in config_to_dict(cfg).items() if k not in ("out", "overwrite")},
        "train": train,
        "val": val,
        "resolution_dir": RES_DIR,
        "size": [cfg.height, cfg.width],
        "frames": cfg.frames,
    }
    st.write_json("synthetic.json", manifest)


def main(argv: Sequence[str] | None = None, prog: str = "python -m pipeline.synthetic") -> int:
    """The generator's command line (also ``hmhi-uvos synthetic``); exit status as every job's: 0, 1 (a video was
    rejected), 2 (a user error, one line)."""
    return run_job_main(
        functools.partial(_generate_from_args, prog=prog), None if argv is None else list(argv)
    )


def _generate_from_args(argv: Sequence[str], prog: str) -> dict:
    argv = list(argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--out", argv[0], *argv[1:]]  # OUT may be given first, without --out
    cfg = parse_job_args(
        SyntheticConfig,
        argv,
        prog=prog,
        description="Generate a deterministic synthetic UVOS corpus in DAVIS-2016 layout.\n\n"
        f"The output folder may also be given first, without --out: {prog} OUT --videos N ...",
        flags={
            "--out": "out",
            "--videos": "videos",
            "--frames": "frames",
            "--size": "size",
            "--seed": "seed",
            "--val-fraction": "val_fraction",
            "--mp4": ("mp4", True),
            "--overwrite": ("overwrite", True),
        },
    )
    setup_logging()
    summary = generate_corpus(cfg)
    if summary["counts"].get("video", {}).get("rejected", 0):
        raise JobFailed(f"synthetic: videos rejected: {summary['rejected']}", summary=summary)
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
