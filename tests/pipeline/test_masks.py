"""Tests for the mask codec (pipeline/masks.py)."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipeline.masks import (
    MaskError,
    binarize,
    davis_palette,
    decode_mask_png,
    encode_mask_png,
    encode_prob_png,
    mask_to_rle,
    read_mask,
    read_mask_values,
    rle_to_mask,
    stretch_prob_uint8,
)


def _png(array: np.ndarray, palette: list[int] | None = None) -> bytes:
    # Mode from dtype and shape: bool "1", uint8 "L", (H,W,3) "RGB", (H,W,4) "RGBA".
    image = Image.fromarray(array)
    if palette is not None:
        image.putpalette(palette)  # "L" -> "P"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def blob() -> np.ndarray:
    mask = np.zeros((37, 53), dtype=bool)
    mask[5:20, 10:40] = True
    mask[30, 0] = True  # a lone pixel on the left edge
    mask[36, 52] = True  # bottom-right corner
    return mask


def test_encode_mask_png_is_davis_palette_and_round_trips(blob):
    data = encode_mask_png(blob)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "P"
    assert image.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
    assert data[24] == 1  # IHDR bit depth: one bit per pixel (a width of 53 pads each packed row)
    indices = np.asarray(image)
    assert set(np.unique(indices)) == {0, 1}
    np.testing.assert_array_equal(indices == 1, blob)
    np.testing.assert_array_equal(decode_mask_png(data), blob)
    np.testing.assert_array_equal(read_mask(data), blob)


def test_palette_masks_use_indices_not_colours(blob):
    # Index 1 painted black in the palette is still foreground; index 0 painted white is background.
    palette = [255, 255, 255] + [0, 0, 0] * 255
    labels = blob.astype(np.uint8) * 3  # object label 3, as in a multi-object DAVIS frame
    got = read_mask(_png(labels, palette))
    np.testing.assert_array_equal(got, blob)
    assert read_mask_values(_png(labels, palette)).max() == 3


def test_greyscale_rgb_and_rgba_any_nonzero(blob):
    grey = blob.astype(np.uint8) * 255
    np.testing.assert_array_equal(read_mask(_png(grey)), blob)
    faint = blob.astype(np.uint8)  # value 1 is still foreground
    np.testing.assert_array_equal(read_mask(_png(faint)), blob)
    rgb = np.zeros(blob.shape + (3,), dtype=np.uint8)
    rgb[blob] = (0, 0, 200)  # only the blue channel set
    np.testing.assert_array_equal(read_mask(_png(rgb)), blob)
    rgba = np.concatenate([rgb, np.full(blob.shape + (1,), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(read_mask(_png(rgba)), blob)
    np.testing.assert_array_equal(read_mask(_png(blob)), blob)


def test_read_mask_from_path_and_threshold(tmp_path):
    soft = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    path = tmp_path / "soft.png"
    path.write_bytes(_png(soft))
    assert read_mask(path).tolist() == [[False, True, True, True]]
    assert read_mask(str(path), threshold=0.5).tolist() == [[False, False, True, True]]
    assert read_mask(path, threshold=0.0).tolist() == [[False, True, True, True]]
    with pytest.raises(MaskError, match="threshold"):
        read_mask(path, threshold=1.5)


def test_errors_name_the_file(tmp_path, blob):
    with pytest.raises(MaskError, match="missing.png"):
        read_mask(tmp_path / "missing.png")
    bad = tmp_path / "garbage.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(MaskError, match="garbage.png"):
        read_mask(bad)
    truncated = encode_mask_png(blob)[:60]
    with pytest.raises(MaskError, match="s3://b/seq/00001.png"):
        read_mask(truncated, name="s3://b/seq/00001.png")
    with pytest.raises(MaskError, match="empty"):
        read_mask(b"", name="x.png")
    with pytest.raises(MaskError, match="not a PNG"):
        buffer = io.BytesIO()
        Image.fromarray(blob.astype(np.uint8) * 255).save(buffer, format="JPEG")
        decode_mask_png(buffer.getvalue(), name="frame.jpg")
    with pytest.raises(MaskError, match="shape"):
        encode_mask_png(np.zeros((2, 3, 4), dtype=bool))


def test_encode_prob_png_absolute_and_official():
    prob = np.array([[0.0, 0.25, 0.5, 1.0]])
    grey = np.asarray(Image.open(io.BytesIO(encode_prob_png(prob))))
    assert grey.dtype == np.uint8 and grey.tolist() == [[0, 64, 128, 255]]
    # official: uint8(255 * (p - min) / (max - min + 1e-8)), per frame
    prob = np.array([[0.2, 0.3, 0.4, 0.6]])
    official = np.asarray(Image.open(io.BytesIO(encode_prob_png(prob, mode="official_minmax"))))
    assert official.tolist() == [[0, 63, 127, 255]]
    with pytest.raises(MaskError, match="mode"):
        encode_prob_png(prob, mode="relative")
    with pytest.raises(MaskError, match="NaN"):
        encode_prob_png(np.array([[np.nan, 0.1]]))


def test_binarize_absolute_is_strict():
    prob = np.array([[0.0, 0.5, 0.5000001, 1.0]])
    assert binarize(prob).tolist() == [[False, False, True, True]]
    assert binarize(prob, threshold=0.0).tolist() == [[False, True, True, True]]


def test_binarize_official_minmax_is_relative_per_frame():
    # A confident "nothing here" frame still yields foreground in the official mode.
    prob = np.array([[0.01, 0.02, 0.03, 0.04]])
    assert not binarize(prob).any()
    # stretched: 255 * [0, 1/3, 2/3, 1] / (1 + 1e-8 / 0.03), truncated: the official +1e-8 shows on a range of 0.03
    assert stretch_prob_uint8(prob).tolist() == [[0, 84, 169, 254]]
    assert binarize(prob, mode="official_minmax").tolist() == [[False, False, True, True]]
    # 129/255 is the smallest kept stretched value: exactly 128 is dropped
    prob = np.array([[0.0, 128.5 / 255, 129.5 / 255, 1.0]])
    assert stretch_prob_uint8(prob).tolist() == [[0, 128, 129, 255]]
    assert binarize(prob, mode="official_minmax").tolist() == [[False, False, True, True]]
    # constant maps have nothing to stretch
    assert not binarize(np.full((3, 3), 0.9), mode="official_minmax").any()
    with pytest.raises(MaskError, match="mode"):
        binarize(prob, mode="minmax")


def test_rle_round_trip_str_counts_and_parquet(blob):
    rle = mask_to_rle(blob)
    assert rle["size"] == [37, 53] and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(rle_to_mask(rle), blob)
    # survives JSON and a Parquet round trip (str column)
    np.testing.assert_array_equal(rle_to_mask(json.loads(json.dumps(rle))), blob)
    table = pa.table({"height": [rle["size"][0]], "width": [rle["size"][1]], "rle": [rle["counts"]]})
    sink = pa.BufferOutputStream()
    import pyarrow.parquet as pq

    pq.write_table(table, sink)
    row = pq.read_table(pa.BufferReader(sink.getvalue())).to_pylist()[0]
    back = rle_to_mask({"size": [row["height"], row["width"]], "counts": row["rle"]})
    np.testing.assert_array_equal(back, blob)
    # bytes counts (pycocotools' own form) and empty / full masks
    np.testing.assert_array_equal(rle_to_mask({"size": rle["size"], "counts": rle["counts"].encode()}), blob)
    for mask in (np.zeros((4, 5), bool), np.ones((4, 5), bool)):
        np.testing.assert_array_equal(rle_to_mask(mask_to_rle(mask)), mask)


def test_rle_uncompressed_counts_and_errors():
    mask = np.zeros((3, 4), dtype=bool)
    mask[1, 2] = True  # column-major index 2*3 + 1 = 7
    np.testing.assert_array_equal(rle_to_mask({"size": [3, 4], "counts": [7, 1, 4]}), mask)
    with pytest.raises(MaskError, match="sum"):
        rle_to_mask({"size": [3, 4], "counts": [7, 1]})
    with pytest.raises(MaskError, match="size"):
        rle_to_mask({"counts": "abc"})


def test_davis_palette_matches_known_colours():
    palette = davis_palette()
    assert len(palette) == 768
    assert palette[3 * 1 : 3 * 1 + 3] == [128, 0, 0]
    assert palette[3 * 2 : 3 * 2 + 3] == [0, 128, 0]
    assert palette[3 * 3 : 3 * 3 + 3] == [128, 128, 0]
    assert palette[3 * 255 : 3 * 255 + 3] == [224, 224, 192]


def test_stretch_equals_official_save_images_arithmetic():
    """ZhengxyFlow/HMHI-Net utils/func.py:save_images, transcribed on numpy (its sal is a float32 array; NumPy 1.24
    adds the Python 1e-8 to the float32 range in float64, then divides the float32 array by it in float32)."""
    rng = np.random.default_rng(0)
    for scale in (1.0, 1e-2, 1e-4):
        sal = (0.5 + scale * rng.random((40, 50))).astype(np.float32)
        denominator = np.float32(float(sal.max() - sal.min()) + 1e-8)
        official = ((sal - sal.min()) / denominator * np.float32(255)).astype(np.uint8)
        ours = stretch_prob_uint8(sal.astype(np.float64))
        assert np.abs(ours.astype(int) - official.astype(int)).max() <= 1
        assert (ours == official).mean() > 0.99


def test_white_background_ppm_and_grey_reading():
    from pipeline.masks import read_mask_grey

    # FBMS-59 GroundTruth/*_gt.ppm: colour regions on a white background (torchseg's fbms_dataset zeroes 255).
    rgb = np.full((4, 5, 3), 255, np.uint8)
    rgb[1, 1] = (255, 0, 0)
    rgb[2, 3] = (0, 0, 0)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PPM")
    mask = read_mask(buffer.getvalue(), white_background=True, name="cars1_01_gt.ppm")
    assert mask.sum() == 2 and mask[1, 1] and mask[2, 3]
    assert read_mask(buffer.getvalue()).sum() == 19  # the default rule takes the white background as object
    # grey reading: soft maps keep their level, binary palette masks become 0/255
    soft = io.BytesIO()
    Image.fromarray(np.array([[0, 128, 129]], np.uint8)).save(soft, format="PNG")
    assert read_mask_grey(soft.getvalue()).tolist() == [[0, 128, 129]]
    assert read_mask_grey(encode_mask_png(np.array([[0, 1, 1]]))).tolist() == [[0, 255, 255]]
