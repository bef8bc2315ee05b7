"""The one mask codec: reading, writing and binarising segmentation masks.

Every job that reads or writes masks goes through this module so that "what counts as foreground"
is decided in one place:

- reading: images are sized from their header before they are decoded (the pixel limit of
  :mod:`pipeline.imaging`: a bigger one is a :class:`MaskError` naming it); any non-zero value is foreground (palette/indexed PNGs by their *indices*, greyscale by
  value, RGB(A) if any colour channel is non-zero); an optional threshold turns soft greyscale maps
  into masks;
- writing: binary masks as DAVIS palette PNGs (index 0 background, 1 object), soft probabilities as
  8-bit greyscale PNGs, and COCO RLE (pycocotools) with ``counts`` as a ``str`` so that it fits in
  Parquet and JSON;
- binarising model probabilities: ``p > threshold`` (our default), or the official HMHI-Net mode
  (per-frame min-max stretch to uint8 by truncation, then ``> 128``; see docs/evaluation.md §6).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.imaging import ImageTooLargeError, open_image
from pipeline.transforms import official_soft_map

__all__ = [
    "MaskError",
    "BinarizeMode",
    "davis_palette",
    "read_mask",
    "read_mask_values",
    "read_mask_grey",
    "decode_mask_png",
    "encode_mask_png",
    "encode_prob_png",
    "stretch_prob_uint8",
    "binarize",
    "mask_to_rle",
    "rle_to_mask",
]

BinarizeMode = Literal["absolute", "official_minmax"]
BINARIZE_MODES: tuple[str, ...] = ("absolute", "official_minmax")

# The official HMHI-Net evaluation keeps stretched uint8 values strictly above this.
OFFICIAL_UINT8_THRESHOLD = 128

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class MaskError(ValueError):
    """A mask could not be read, decoded or encoded; the message names the file."""


def davis_palette() -> list[int]:
    """The DAVIS / PASCAL VOC colour map as a flat 768-entry list (index 0 black, 1 dark red, ...)."""
    palette: list[int] = []
    for index in range(256):
        r = g = b = 0
        label = index
        for bit in range(8):
            r |= ((label >> 0) & 1) << (7 - bit)
            g |= ((label >> 1) & 1) << (7 - bit)
            b |= ((label >> 2) & 1) << (7 - bit)
            label >>= 3
        palette.extend((r, g, b))
    return palette


_DAVIS_PALETTE = davis_palette()


def _describe(data: bytes | str | Path, name: str | None) -> str:
    if name:
        return name
    if isinstance(data, (str, Path)):
        return str(data)
    return "<mask bytes>"


def _open_image(data: bytes | str | Path, name: str | None) -> tuple[Image.Image, str]:
    label = _describe(data, name)
    if isinstance(data, (str, Path)):
        try:
            data = Path(data).read_bytes()
        except OSError as err:
            raise MaskError(f"cannot read mask file {label}: {err}") from err
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise MaskError(f"mask {label}: expected bytes or a path, got {type(data).__name__}")
    if len(data) == 0:
        raise MaskError(f"mask {label} is empty (0 bytes)")
    try:
        image = open_image(bytes(data), f"mask {label}")  # sized from its header first (pipeline.imaging)
        image.load()  # decode now so truncated files fail here, with the file's name
    except ImageTooLargeError as err:
        raise MaskError(str(err)) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise MaskError(f"mask {label} is not a readable image: {err}") from err
    return image, label


def _image_values(image: Image.Image, label: str) -> tuple[np.ndarray, float]:
    """(H, W) array of per-pixel values and the value that stands for "fully on" (for thresholds)."""
    mode = image.mode
    if mode in ("P", "PA"):
        # Indexed PNGs: the index is the label, whatever colour the palette gives it.
        return np.asarray(image.getchannel(0) if mode == "PA" else image), 0.0
    if mode == "1":
        return np.asarray(image, dtype=np.uint8), 1.0
    if mode in ("L", "LA"):
        return np.asarray(image.getchannel(0) if mode == "LA" else image), 255.0
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image)
        full = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        return values, full
    if mode == "F":
        return np.asarray(image, dtype=np.float32), 1.0
    if mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        rgb = np.asarray(image.convert("RGB"))
        # A colour mask: foreground wherever any channel is set (alpha is presentation only).
        return rgb.max(axis=2), 255.0
    raise MaskError(f"mask {label} has unsupported image mode {mode!r}")


def read_mask_values(data: bytes | str | Path, *, name: str | None = None) -> np.ndarray:
    """Raw (H, W) mask values: palette indices, grey levels, or the max over RGB channels."""
    image, label = _open_image(data, name)
    values, _ = _image_values(image, label)
    return values


def read_mask_grey(data: bytes | str | Path, *, name: str | None = None) -> np.ndarray:
    """(H, W) uint8 grey levels of a prediction, as the official HMHI-Net evaluation reads it (``cv2.imread(p, 0)``).

    Greyscale soft maps keep their values (16-bit ones are scaled to 8 bits) and colour images become their luma.
    Indexed and 1-bit images are this project's binary masks: index != 0 becomes 255 (OpenCV would give the luma of
    the palette colour, 38 for DAVIS's dark red, so a binary mask would vanish under ``> 128``).
    """
    image, label = _open_image(data, name)
    if image.mode in ("P", "PA", "1"):
        values, _ = _image_values(image, label)
        return np.where(values != 0, 255, 0).astype(np.uint8)
    if image.mode in ("L", "LA"):
        return np.asarray(image.getchannel(0) if image.mode == "LA" else image, dtype=np.uint8)
    if image.mode.startswith("I;16") or image.mode == "I":
        values, full = _image_values(image, label)
        return (values.astype(np.float64) * 255.0 / full).astype(np.uint8)
    try:
        return np.asarray(image.convert("L"), dtype=np.uint8)
    except ValueError as err:
        raise MaskError(f"mask {label} has unsupported image mode {image.mode!r}") from err


def read_mask(
    data: bytes | str | Path,
    *,
    threshold: float | None = None,
    name: str | None = None,
    white_background: bool = False,
) -> np.ndarray:
    """Read a mask image (PNG, or anything Pillow reads) into a (H, W) bool array.

    Args:
        data: encoded image bytes, or a local file path.
        threshold: ``None`` (default): any non-zero value is foreground. A float in [0, 1): soft maps
            (greyscale/RGB) are foreground where ``value / full_scale > threshold``; indexed
            (palette) images are label maps and always use "index non-zero".
        name: what to call the mask in error messages (e.g. its URL) when ``data`` is bytes.
        white_background: the mask draws its background white (FBMS-59 ``GroundTruth/*_gt.ppm``): foreground is
            every pixel that is not pure white; ``threshold`` does not apply.

    Raises:
        MaskError: unreadable, truncated or unsupported images; the message names the file.
    """
    if threshold is not None and not 0.0 <= threshold < 1.0:
        raise MaskError(f"threshold must be in [0, 1), got {threshold!r}")
    image, label = _open_image(data, name)
    if white_background:
        try:
            rgb = np.asarray(image.convert("RGB"))
        except ValueError as err:
            raise MaskError(f"mask {label} has unsupported image mode {image.mode!r}") from err
        return (rgb != 255).any(axis=2)
    values, full_scale = _image_values(image, label)
    if threshold is None or full_scale == 0.0:
        return values != 0
    return values.astype(np.float64) > threshold * full_scale


def decode_mask_png(data: bytes, *, threshold: float | None = None, name: str | None = None) -> np.ndarray:
    """Decode PNG bytes into a (H, W) bool mask (see :func:`read_mask`); non-PNG data is an error."""
    label = _describe(data, name)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MaskError(f"mask {label}: expected PNG bytes, got {type(data).__name__}")
    if not bytes(data[:8]) == _PNG_SIGNATURE:
        raise MaskError(f"mask {label} is not a PNG (bad signature)")
    return read_mask(bytes(data), threshold=threshold, name=name)


def _as_2d(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    elif array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2 or array.size == 0:
        raise MaskError(f"{what} must be a non-empty (H, W) array, got shape {array.shape}")
    return array


def encode_mask_png(mask: np.ndarray) -> bytes:
    """Encode a binary mask as a DAVIS palette PNG: index 0 background, index 1 the object.

    Any non-zero / True value is the object. The PNG stores 1 bit per pixel with the palette's first two colours:
    every reader sees the same indices as in an 8-bit DAVIS PNG, and a 480p mask encodes and decodes ~4x faster
    (the inflated image is 8x smaller).
    """
    mask = _as_2d(mask, "mask")
    image = Image.fromarray((mask != 0).astype(np.uint8))
    image.putpalette(_DAVIS_PALETTE[:6])  # turns the greyscale image into a palette ("P") image
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, bits=1)
    return buffer.getvalue()


def _check_prob(prob: np.ndarray) -> np.ndarray:
    prob = _as_2d(prob, "probability map").astype(np.float64, copy=False)
    if not np.isfinite(prob).all():
        raise MaskError("probability map contains NaN or infinite values")
    return prob


def stretch_prob_uint8(prob: np.ndarray) -> np.ndarray:
    """Official HMHI-Net soft map, per frame: ``uint8(255 * (p - min) / (max - min + 1e-8))``.

    The arithmetic is the official ``utils/func.py:save_images`` one: float32, the ``+ 1e-8`` in the
    denominator, truncation to uint8. A constant map (max == min) becomes all zeros. The ``+ 1e-8`` only shows
    on maps whose range is tiny (range 1e-3: the maximum becomes 254, not 255).
    """
    return official_soft_map(_check_prob(prob))  # one implementation of the official arithmetic


def encode_prob_png(prob: np.ndarray, mode: BinarizeMode = "absolute") -> bytes:
    """Encode a probability map as an 8-bit greyscale PNG.

    ``absolute``: ``round(255 * clip(p, 0, 1))``; ``official_minmax``: :func:`stretch_prob_uint8`, the
    soft PNG the official HMHI-Net code writes (its evaluation then keeps values ``> 128``).
    """
    if mode == "absolute":
        prob = _check_prob(prob)
        grey = np.round(np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif mode == "official_minmax":
        grey = stretch_prob_uint8(prob)
    else:
        raise MaskError(f"mode must be one of {BINARIZE_MODES}, got {mode!r}")
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    return buffer.getvalue()


def binarize(prob: np.ndarray, mode: BinarizeMode = "absolute", threshold: float = 0.5) -> np.ndarray:
    """Turn a (H, W) probability map into a bool mask.

    ``absolute`` (default): ``p > threshold``. ``official_minmax``: the official HMHI-Net rule, a
    per-frame min-max stretch truncated to uint8 and then ``> 128``, which is relative to each frame
    (``threshold`` does not apply in this mode).
    """
    if mode == "absolute":
        if not 0.0 <= threshold < 1.0:
            raise MaskError(f"threshold must be in [0, 1), got {threshold!r}")
        return _check_prob(prob) > threshold
    if mode == "official_minmax":
        return stretch_prob_uint8(prob) > OFFICIAL_UINT8_THRESHOLD
    raise MaskError(f"mode must be one of {BINARIZE_MODES}, got {mode!r}")


def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO RLE of a (H, W) mask: ``{"size": [H, W], "counts": str}`` (JSON / Parquet friendly)."""
    from pycocotools import mask as coco_mask  # compiled extension; imported where used

    mask = _as_2d(mask, "mask")
    encoded = coco_mask.encode(np.asfortranarray(mask != 0, dtype=np.uint8))
    counts = encoded["counts"]
    return {
        "size": [int(encoded["size"][0]), int(encoded["size"][1])],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def rle_to_mask(rle: dict) -> np.ndarray:
    """Decode a COCO RLE (compressed ``str``/``bytes`` counts, or uncompressed list counts) to a bool mask."""
    from pycocotools import mask as coco_mask

    try:
        height, width = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as err:
        raise MaskError(f"RLE must be a dict with 'size' [H, W] and 'counts', got {rle!r:.200}") from err
    if isinstance(counts, (list, tuple, np.ndarray)):
        if int(np.sum(counts)) != height * width:
            raise MaskError(
                f"uncompressed RLE counts sum to {int(np.sum(counts))}, expected {height * width}"
            )
        compressed = coco_mask.frPyObjects(
            {"size": [height, width], "counts": list(map(int, counts))}, height, width
        )
    elif isinstance(counts, (str, bytes)):
        compressed = {
            "size": [height, width],
            "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
        }
    else:
        raise MaskError(f"RLE counts must be str, bytes or a list, got {type(counts).__name__}")
    return coco_mask.decode(compressed).astype(bool)
