"""Image decoding: the one place where encoded frames, flow pictures and images become RGB arrays, and the one home
of the pixel limit every decoder of untrusted images checks first.

Ingest (frame folders), the model's input transform (segment, training) and the dataset stages all decode through
:func:`decode_rgb`, so a corrupt or truncated file is refused the same way everywhere, with an error naming it.

**Pixel limit.** A small file can describe a huge image (a 49 kB PNG of 20000x20000 pixels decodes to 400 MB
grey, 1.2 GB RGB). Every image is therefore sized from its header before it is decoded (:func:`open_image`,
:func:`check_image_header`; masks in :mod:`pipeline.masks` and videos in :mod:`pipeline.video` use
:func:`check_pixels` too), and one with more than :func:`max_image_pixels` pixels is refused with
:class:`ImageTooLargeError` naming the file (default :data:`DEFAULT_MAX_IMAGE_PIXELS`, 64 megapixels: an 8K frame
is 33; ``HMHI_MAX_IMAGE_PIXELS`` sets another). Pillow's own bomb error (beyond twice its ``MAX_IMAGE_PIXELS``,
~179 megapixels) becomes the same error; its bomb warning (beyond ~89 megapixels) only concerns images above the
default limit, which are refused anyway. Formats Pillow cannot read are left to OpenCV, whose own limit is 2^30
pixels, and their size is checked right after decoding.
"""

from __future__ import annotations

import io
import os
import re
from typing import Literal

import numpy as np
from PIL import Image

__all__ = [
    "DECODERS",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "Decoder",
    "ImageTooLargeError",
    "check_image_header",
    "check_pixels",
    "decode_image",
    "decode_rgb",
    "max_image_pixels",
    "open_image",
]

Decoder = Literal["opencv", "pil"]
DECODERS: tuple[str, ...] = ("opencv", "pil")
"""Image decoders: 'opencv' (the project's, faster) and 'pil' (the official code's ``Image.open().convert('RGB')``)."""

DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
"""Largest image (width x height) decoded, unless ``HMHI_MAX_IMAGE_PIXELS`` says otherwise."""
MAX_IMAGE_PIXELS_ENV = "HMHI_MAX_IMAGE_PIXELS"


class ImageTooLargeError(ValueError):
    """An image has more pixels than the limit; the message names the file and its size. Nothing was decoded."""


def max_image_pixels() -> int:
    """The pixel limit: ``HMHI_MAX_IMAGE_PIXELS`` if set (a positive integer), else the default."""
    text = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{MAX_IMAGE_PIXELS_ENV}={text!r}: must be a positive number of pixels")
    return value


def check_pixels(width: int, height: int, name: str) -> None:
    """Raise :class:`ImageTooLargeError` naming ``name`` if a ``width`` x ``height`` image is over the limit."""
    limit = max_image_pixels()
    if width * height > limit:
        raise ImageTooLargeError(
            f"{name} is {width}x{height} = {width * height:,} pixels, more than the limit of {limit:,} "
            f"({MAX_IMAGE_PIXELS_ENV}); not decoded"
        )


def open_image(data: bytes, name: str) -> Image.Image:
    """A Pillow image of ``data`` with only its header read, its size checked against the limit (not decoded).

    Raises :class:`ImageTooLargeError` for an image over the limit, Pillow's errors for data it cannot read.
    """
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:  # Pillow's own, far higher limit; its message has the size
        size = re.search(r"\((\d+) pixels\)", str(err))
        pixels = f"{int(size.group(1)):,} pixels" if size else "more pixels than Pillow allows"
        raise ImageTooLargeError(
            f"{name} has {pixels}, more than the limit of {max_image_pixels():,} ({MAX_IMAGE_PIXELS_ENV}); "
            "not decoded"
        ) from err
    check_pixels(image.width, image.height, name)
    return image


def check_image_header(data: bytes, name: str) -> None:
    """Refuse an image over the pixel limit from its header alone (:class:`ImageTooLargeError`); data Pillow cannot
    identify passes (the decoder that reads it decides)."""
    try:
        open_image(data, name).close()
    except ImageTooLargeError:
        raise
    except Exception:  # Pillow raises many types for data it cannot identify
        return


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode an encoded image to (H, W, 3) uint8 RGB with OpenCV (PIL for what OpenCV cannot read); raise
    ``ValueError`` naming ``name`` if it is corrupt, :class:`ImageTooLargeError` if it is over the pixel limit."""
    import cv2  # ~0.3 s: only the processes that decode images pay it

    if not data:
        raise ValueError(f"{name} is empty (zero bytes)")
    head = data[:3]
    if head == b"\xff\xd8\xff":
        # libjpeg decodes a truncated JPEG with only a warning (grey bottom rows): require the end-of-image marker.
        if data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
            raise ValueError(f"{name} is a truncated JPEG (no end-of-image marker)")
    check_image_header(data, name)  # before OpenCV allocates the frame
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        return _decode_pil(data, name)
    check_pixels(
        img.shape[1], img.shape[0], name
    )  # a format only OpenCV reads: bounded by OpenCV's own limit
    return np.ascontiguousarray(img[..., ::-1])


def _decode_pil(data: bytes, name: str) -> np.ndarray:
    if not data:
        raise ValueError(f"{name} is empty (zero bytes)")
    try:
        with open_image(data, name) as image:
            return np.asarray(image.convert("RGB"))
    except ImageTooLargeError:
        raise
    except Exception as err:  # Pillow raises many types for corrupt or truncated data
        raise ValueError(f"{name} cannot be decoded as an image ({type(err).__name__}: {err})") from err


def decode_rgb(data: bytes, name: str, decoder: Decoder = "opencv") -> np.ndarray:
    """Decode an encoded image to (H, W, 3) uint8 RGB; ``ValueError`` naming ``name`` when it is corrupt (an
    :class:`ImageTooLargeError` when it is over the pixel limit).

    ``opencv`` is the project's decoder (:func:`decode_image`, faster); ``pil`` is the official code's
    ``Image.open(f).convert('RGB')``. The two JPEG decoders may differ by a grey level on some pixels.
    """
    if decoder == "opencv":
        return decode_image(data, name)
    if decoder != "pil":
        raise ValueError(f"decoder {decoder!r}: expected one of {', '.join(DECODERS)}")
    return _decode_pil(data, name)
