"""Image decoding: the one place where encoded frames, flow pictures and images become RGB arrays.

Ingest (frame folders), the model's input transform (segment, training) and the dataset stages all decode through
:func:`decode_rgb`, so a corrupt or truncated file is refused the same way everywhere, with an error naming it.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image

__all__ = ["DECODERS", "Decoder", "decode_image", "decode_rgb"]

Decoder = Literal["opencv", "pil"]
DECODERS: tuple[str, ...] = ("opencv", "pil")
"""Image decoders: 'opencv' (the project's, faster) and 'pil' (the official code's ``Image.open().convert('RGB')``)."""


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode an encoded image to (H, W, 3) uint8 RGB with OpenCV (PIL for what OpenCV cannot read); raise
    ``ValueError`` naming ``name`` if it is corrupt."""
    import cv2  # ~0.3 s: only the processes that decode images pay it

    if not data:
        raise ValueError(f"{name} is empty (zero bytes)")
    head = data[:3]
    if head == b"\xff\xd8\xff":
        # libjpeg decodes a truncated JPEG with only a warning (grey bottom rows): require the end-of-image marker.
        if data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
            raise ValueError(f"{name} is a truncated JPEG (no end-of-image marker)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        return _decode_pil(data, name)
    return np.ascontiguousarray(img[..., ::-1])


def _decode_pil(data: bytes, name: str) -> np.ndarray:
    if not data:
        raise ValueError(f"{name} is empty (zero bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as err:  # Pillow raises many types for corrupt or truncated data
        raise ValueError(f"{name} cannot be decoded as an image ({type(err).__name__}: {err})") from err


def decode_rgb(data: bytes, name: str, decoder: Decoder = "opencv") -> np.ndarray:
    """Decode an encoded image to (H, W, 3) uint8 RGB; ``ValueError`` naming ``name`` when it is corrupt.

    ``opencv`` is the project's decoder (:func:`decode_image`, faster); ``pil`` is the official code's
    ``Image.open(f).convert('RGB')``. The two JPEG decoders may differ by a grey level on some pixels.
    """
    if decoder == "opencv":
        return decode_image(data, name)
    if decoder != "pil":
        raise ValueError(f"decoder {decoder!r}: expected one of {', '.join(DECODERS)}")
    return _decode_pil(data, name)
