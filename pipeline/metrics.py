"""DAVIS region (J) and boundary (F) measures, per-sequence statistics and dataset aggregation.

The per-frame functions reproduce the official DAVIS code (davis2017-evaluation ``metrics.py``, which
is also what DAVIS-2016 uses for J and F) exactly; see docs/evaluation.md for the definitions and
the worked numbers the tests check. Differences from the official code are deliberate and listed:

- :func:`db_statistics` uses integer bin indices, so the decay is correct for any number of frames
  (the official code casts the indices to uint8 and returns NaN for N >= 256);
- no void pixels: this project evaluates binary (single-object) UVOS, where the GT is "any non-zero
  pixel is foreground" (multi-object GT is merged).

Argument order is the official one: ground truth first, prediction second.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import cv2
import numpy as np

__all__ = [
    "PROTOCOLS",
    "protocol_slices",
    "Protocol",
    "METRIC_KEYS",
    "boundary_radius",
    "seg2bmap",
    "db_eval_iou",
    "db_eval_boundary",
    "db_statistics",
    "evaluate_frames",
    "sequence_statistics",
    "evaluate_sequence",
    "aggregate_results",
]

Protocol = Literal["davis2016", "all", "hmhi_official"]
PROTOCOLS: tuple[str, ...] = ("davis2016", "all", "hmhi_official")
"""``davis2016``: drop the first and last frame everywhere (official DAVIS-2016 code).
``all``: every frame (davis2017-evaluation, unsupervised task).
``hmhi_official``: means over every frame, recall and decay over the inner frames (official HMHI-Net
evaluation; pair it with predictions binarised the official way, see pipeline.masks.binarize)."""

METRIC_KEYS: tuple[str, ...] = ("J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay", "JF_mean")

DEFAULT_BOUND_TH = 0.008


def _as_bool_2d(mask: np.ndarray, what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{what} must be a (H, W) mask, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} shapes differ")
    if gt.ndim not in (2, 3):
        raise ValueError(f"masks must be (H, W) or (T, H, W), got shape {gt.shape}")
    return gt.astype(bool, copy=False), pred.astype(bool, copy=False)


def db_eval_iou(gt: np.ndarray, pred: np.ndarray) -> float | np.ndarray:
    """Region similarity J = |P ∩ G| / |P ∪ G| per frame; 1 when both masks are empty.

    Accepts (H, W) masks (returns a float) or (T, H, W) stacks (returns a (T,) float array).
    """
    gt, pred = _check_pair(gt, pred)
    intersection = np.count_nonzero(gt & pred, axis=(-2, -1))
    union = np.count_nonzero(gt | pred, axis=(-2, -1))
    safe_union = np.where(union == 0, 1, union)
    j = np.where(union == 0, 1.0, intersection / safe_union)
    return float(j) if j.ndim == 0 else j.astype(np.float64)


def boundary_radius(shape: tuple[int, ...], bound_th: float = DEFAULT_BOUND_TH) -> int:
    """Tolerance in pixels: ``bound_th`` itself if >= 1, else ``ceil(bound_th * sqrt(H² + W²))``."""
    if bound_th <= 0:
        raise ValueError(f"bound_th must be > 0, got {bound_th!r}")
    if bound_th >= 1:
        return int(bound_th)
    height, width = shape[-2], shape[-1]
    return int(math.ceil(bound_th * float(np.linalg.norm([height, width]))))


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """BSDS ``seg2bmap`` boundary map: a pixel differing from its E, S or SE neighbour.

    Last row: east neighbour only; last column: south only; the bottom-right pixel never; so a
    mask covering the whole frame has no boundary.
    """
    seg = _as_bool_2d(mask, "mask")
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    boundary = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    boundary[-1, :] = seg[-1, :] ^ east[-1, :]
    boundary[:, -1] = seg[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return boundary


def _disk(radius: int) -> np.ndarray:
    offsets = np.arange(-radius, radius + 1)
    return ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius**2).astype(np.uint8)


def _f_measure(gt: np.ndarray, pred: np.ndarray, radius: int) -> float:
    pred_boundary = seg2bmap(pred)
    gt_boundary = seg2bmap(gt)
    n_pred = int(np.count_nonzero(pred_boundary))
    n_gt = int(np.count_nonzero(gt_boundary))
    # Empty cases are decided on boundary pixels, not mask pixels (docs/evaluation.md §2.4).
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0
    footprint = _disk(radius)
    pred_dilated = cv2.dilate(pred_boundary.astype(np.uint8), footprint).astype(bool)
    gt_dilated = cv2.dilate(gt_boundary.astype(np.uint8), footprint).astype(bool)
    precision = np.count_nonzero(pred_boundary & gt_dilated) / float(n_pred)
    recall = np.count_nonzero(gt_boundary & pred_dilated) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def db_eval_boundary(
    gt: np.ndarray, pred: np.ndarray, bound_th: float = DEFAULT_BOUND_TH
) -> float | np.ndarray:
    """Boundary F-measure per frame, tolerance from the evaluated resolution (see :func:`boundary_radius`).

    Accepts (H, W) masks (returns a float) or (T, H, W) stacks (returns a (T,) float array).
    """
    gt, pred = _check_pair(gt, pred)
    radius = boundary_radius(gt.shape, bound_th)
    if gt.ndim == 2:
        return _f_measure(gt, pred, radius)
    return np.array([_f_measure(g, p, radius) for g, p in zip(gt, pred, strict=True)], dtype=np.float64)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def db_statistics(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """(mean, recall, decay) of per-frame values, as the official DAVIS code defines them.

    - mean: NaN-aware mean;
    - recall: fraction of frames with value > 0.5 (strict; a NaN frame counts as a failure);
    - decay: mean of the first quartile bin minus mean of the last, bins at
      ``round(linspace(1, N, 5) + 1e-10) - 1`` with both ends included. Integer indices here, so
      unlike the official code (uint8) this stays correct for N >= 256.

    An empty input gives (NaN, NaN, NaN).
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    n = values.size
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = _nanmean(values)
    recall = float(np.count_nonzero(values > 0.5)) / n
    # +1e-10 reproduces Matlab's rounding of halves away from zero.
    ids = (np.round(np.linspace(1, n, 5) + 1e-10) - 1).astype(np.int64)
    first_bin = values[ids[0] : ids[1] + 1]
    last_bin = values[ids[3] : ids[4] + 1]
    decay = _nanmean(first_bin) - _nanmean(last_bin)
    return mean, recall, decay


def evaluate_frames(
    gt_masks: Iterable[np.ndarray] | np.ndarray,
    pred_masks: Iterable[np.ndarray] | np.ndarray,
    bound_th: float = DEFAULT_BOUND_TH,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (J, F) arrays for paired GT / prediction masks (every frame, no protocol applied)."""
    j_values: list[float] = []
    f_values: list[float] = []
    for index, (gt, pred) in enumerate(zip(gt_masks, pred_masks, strict=True)):
        gt, pred = np.asarray(gt), np.asarray(pred)
        if gt.shape != pred.shape or gt.ndim != 2:
            raise ValueError(
                f"frame {index}: ground truth {gt.shape} and prediction {pred.shape} must be equal (H, W)"
            )
        j_values.append(db_eval_iou(gt, pred))
        f_values.append(db_eval_boundary(gt, pred, bound_th=bound_th))
    return np.asarray(j_values, dtype=np.float64), np.asarray(f_values, dtype=np.float64)


def protocol_slices(protocol: str) -> tuple[slice, slice]:
    """(frames for the means, frames for recall and decay)."""
    inner, every = slice(1, -1), slice(None)
    if protocol == "davis2016":
        return inner, inner
    if protocol == "all":
        return every, every
    if protocol == "hmhi_official":
        return every, inner
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


def sequence_statistics(j_values: np.ndarray, f_values: np.ndarray, protocol: Protocol = "davis2016") -> dict:
    """Per-sequence J/F mean, recall, decay and J&F from per-frame values under a frame protocol.

    ``n_frames`` is the number of frames in the means. Too few frames (e.g. < 3 under
    ``davis2016``) give NaN metrics and ``n_frames`` 0.
    """
    j_values = np.asarray(j_values, dtype=np.float64)
    f_values = np.asarray(f_values, dtype=np.float64)
    if j_values.shape != f_values.shape or j_values.ndim != 1:
        raise ValueError(f"J {j_values.shape} and F {f_values.shape} must be equal-length 1-D arrays")
    mean_frames, stat_frames = protocol_slices(protocol)
    j_mean = db_statistics(j_values[mean_frames])[0]
    f_mean = db_statistics(f_values[mean_frames])[0]
    _, j_recall, j_decay = db_statistics(j_values[stat_frames])
    _, f_recall, f_decay = db_statistics(f_values[stat_frames])
    return {
        "J_mean": j_mean,
        "J_recall": j_recall,
        "J_decay": j_decay,
        "F_mean": f_mean,
        "F_recall": f_recall,
        "F_decay": f_decay,
        "JF_mean": (j_mean + f_mean) / 2,
        "n_frames": int(j_values[mean_frames].size),
    }


def evaluate_sequence(
    gt_masks: Iterable[np.ndarray] | np.ndarray,
    pred_masks: Iterable[np.ndarray] | np.ndarray,
    protocol: Protocol = "davis2016",
    bound_th: float = DEFAULT_BOUND_TH,
) -> dict:
    """Score one sequence: dict(J_mean, J_recall, J_decay, F_mean, F_recall, F_decay, JF_mean, n_frames).

    Masks are (H, W) arrays (any non-zero is foreground) in frame order, GT and prediction paired.
    """
    protocol_slices(protocol)  # validate before the (slow) per-frame work
    j_values, f_values = evaluate_frames(gt_masks, pred_masks, bound_th=bound_th)
    return sequence_statistics(j_values, f_values, protocol)


def aggregate_results(per_sequence: Mapping[str, Mapping[str, float]]) -> dict:
    """Dataset numbers: unweighted mean over sequences of each metric; J&F = (J_mean + F_mean) / 2.

    Sequences whose metrics are NaN (too few frames for the protocol) are left out of the means and
    listed under ``excluded``.
    """
    included = {name: row for name, row in per_sequence.items() if not math.isnan(row["J_mean"])}
    summary: dict = {}
    for key in METRIC_KEYS:
        if key == "JF_mean":
            continue
        values = [float(row[key]) for row in included.values()]
        summary[key] = _nanmean(np.asarray(values)) if values else float("nan")
    summary["JF_mean"] = (summary["J_mean"] + summary["F_mean"]) / 2
    summary["n_sequences"] = len(included)
    summary["n_frames"] = int(sum(int(row.get("n_frames", 0)) for row in included.values()))
    summary["excluded"] = sorted(set(per_sequence) - set(included))
    return {key: summary[key] for key in (*METRIC_KEYS, "n_sequences", "n_frames", "excluded")}
