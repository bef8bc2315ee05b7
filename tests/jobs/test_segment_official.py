"""The official HMHI-Net inference protocol end to end: ``jobs/segment.py --preset official --flow-model pictures``
on an official archive made from the shared fixture (../shared/fixtures/official_hmhi), with the fixture's weights as
an official checkpoint file; and bf16 against fp32 on the same clip.

The official pre- and post-processing are written out here as ZhengxyFlow/HMHI-Net does them (utils/dataloader.py:
``Image.open(f).convert('RGB')``, ``transforms.Resize((512, 512))``, ``ToTensor``, ``Normalize``; utils/func.py
``save_images``: bilinear resize of the logits to the ground truth's size, sigmoid, per-frame min-max stretch with
``+1e-8``, x255, uint8), independently of pipeline.transforms.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from jobs.segment import main
from pipeline.masks import decode_mask_png
from pipeline.storage import open_storage
from tests.conftest import requires_native_bf16

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE = (REPO_ROOT / ".." / "shared" / "fixtures" / "official_hmhi").resolve()
WIDE_H, WIDE_W, WIDE_FRAMES = 480, 854, 2  # a non-square archive video (DAVIS 480p size)
CLIP_FRAMES = (
    5  # frame 4 reads frames 1-3: frame 0 evicted (T=3); the official logits are causal, so 5 of 6 is fine
)


def official_state_dict() -> dict[str, torch.Tensor]:
    """The fixture's weights (seed 0), made by its own make_weights.py."""
    spec = importlib.util.spec_from_file_location("official_make_weights", FIXTURE / "make_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_state_dict(str(FIXTURE / "keys.json"), 0)


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory) -> str:
    """An official-format checkpoint file: ``{'network': state_dict}`` with DDP's ``module.`` prefixes."""
    path = tmp_path_factory.mktemp("official") / "hmhi_official.pth"
    torch.save({"network": {f"module.{k}": v for k, v in official_state_dict().items()}, "epoch": 1}, path)
    return str(path)


@pytest.fixture(scope="module")
def fixture_clip() -> dict[str, np.ndarray]:
    clip = np.load(FIXTURE / "inputs.npz")
    return {"frames": clip["frames"], "flows": clip["flows"]}


def lossless(image: np.ndarray) -> bytes:
    """PNG bytes. The archive's files are named .jpg as in the official archives, but hold PNG data so that they
    decode to the fixture's exact pixels (the decoders read the content, not the name)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def official_soft_maps(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """utils/func.py save_images, per frame: (L, 1, 512, 512) logits -> (L, H, W) uint8 soft maps."""
    maps = []
    for frame_logits in logits:
        sal = F.interpolate(frame_logits[None].float(), size=size, mode="bilinear", align_corners=False)
        sal = sal.sigmoid().data.cpu().numpy().squeeze()
        sal = (sal - sal.min()) / (sal.max() - sal.min() + 1e-8)
        maps.append((sal * 255).astype(np.uint8))
    return np.stack(maps)


def official_inputs(paths: list[Path]) -> torch.Tensor:
    """utils/dataloader.py val_video_data_loader on these files: (1, L, 3, 512, 512)."""
    import torchvision.transforms as transforms

    transform = transforms.Compose(
        [
            transforms.Resize((512, 512)),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    tensors = []
    for path in paths:
        with open(path, "rb") as f:
            tensors.append(transform(Image.open(f).convert("RGB")))
    return torch.stack(tensors)[None]


def write_video(root: Path, video: str, frames: np.ndarray, flows: np.ndarray) -> list[tuple[Path, Path]]:
    """One video in the official layout: frame/val/<video>/<video>_<i>.jpg, flow/ the same names, mask/ .png."""
    paths = []
    for i, (frame, flow) in enumerate(zip(frames, flows, strict=True)):
        name = f"{video}_{i:05d}"
        frame_path, flow_path = (
            root / "frame/val" / video / f"{name}.jpg",
            root / "flow/val" / video / f"{name}.jpg",
        )
        mask_path = root / "mask/val" / video / f"{name}.png"
        for path in (frame_path, flow_path, mask_path):
            path.parent.mkdir(parents=True, exist_ok=True)
        frame_path.write_bytes(lossless(frame))
        flow_path.write_bytes(lossless(flow))
        gt = np.zeros(frame.shape[:2], np.uint8)
        gt[frame.shape[0] // 4 : frame.shape[0] // 2, frame.shape[1] // 4 : frame.shape[1] // 2] = 255
        mask_path.write_bytes(lossless(gt))
        paths.append((frame_path, flow_path))
    return paths


def read_grey(store, rel: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(store.read_bytes(rel))))


def test_official_preset_with_flow_pictures_matches_the_official_code(
    tmp_path, ray_cluster, official_checkpoint, fixture_clip
):
    from model import create_model, load_checkpoint

    archive = tmp_path / "DAVIS2SEG_byvideo"
    write_video(archive, "clip", fixture_clip["frames"][:CLIP_FRAMES], fixture_clip["flows"][:CLIP_FRAMES])
    # The non-square video: fixture pictures squeezed to 480x854 (any content; what matters is the resizing).
    squeeze = lambda img: np.asarray(Image.fromarray(img).resize((WIDE_W, WIDE_H), Image.BICUBIC))  # noqa: E731
    wide_frames = np.stack([squeeze(f) for f in fixture_clip["frames"][:WIDE_FRAMES]])
    wide_flows = np.stack([squeeze(f) for f in fixture_clip["flows"][:WIDE_FRAMES]])
    wide_paths = write_video(archive, "wide", wide_frames, wide_flows)
    out = tmp_path / "out"
    summary = main(
        [
            "--input",
            str(archive),
            "--output",
            str(out),
            "--checkpoint",
            official_checkpoint,
            "--format",
            "hmhi",
            "--preset",
            "official",
            "--flow-model",
            "pictures",
            "--set",
            "runtime.videos_in_flight=2",
        ]
    )
    assert summary["counts"]["video"] == {"done": 2, "skipped": 0, "rejected": 0}, summary["rejected"]
    config = summary["config"]
    assert config["model"]["memory_size"] == 3 and config["model"]["decoder"] == "pil"
    assert config["model"]["precision"] == "fp32" and config["outputs"]["binarize"] == "official_minmax"
    assert summary["figures"]["actor_cpus"] == 1.8  # auto: 2 CPUs less 2 decode tasks x 0.1
    store = open_storage(str(out))

    # 1. The fixture clip (512x512): the official post-processing of the official model's own logits.
    expected = official_soft_maps(
        torch.from_numpy(np.load(FIXTURE / "expected_T3.npz")["logits_full"]), (512, 512)
    )
    for i in range(CLIP_FRAMES):
        soft = read_grey(store, f"probs/clip/clip_{i:05d}.png").astype(int)
        assert soft.shape == (512, 512)
        assert np.abs(soft - expected[i].astype(int)).max() <= 1, f"frame {i}"
        mask = decode_mask_png(store.read_bytes(f"masks/clip/clip_{i:05d}.png"))
        np.testing.assert_array_equal(mask, soft > 128)  # binarised as the official evaluation does

    # 2. The 480x854 video: official preprocessing in (PIL + torchvision) and official resize out, here.
    net = create_model("hmhi_mit_b1", memory_size=3).eval()
    load_checkpoint(net, official_checkpoint)
    with torch.inference_mode():
        full, _ = net.forward_clip(
            official_inputs([p for p, _ in wide_paths]), official_inputs([p for _, p in wide_paths])
        )
    expected = official_soft_maps(full[0], (WIDE_H, WIDE_W))
    for i in range(WIDE_FRAMES):
        soft = read_grey(store, f"probs/wide/wide_{i:05d}.png").astype(int)
        assert soft.shape == (WIDE_H, WIDE_W)
        assert np.abs(soft - expected[i].astype(int)).max() <= 1, f"frame {i}"
    assert store.read_json("done/wide.json")["preset"] == "official"


@requires_native_bf16
def test_bf16_masks_agree_with_fp32(official_checkpoint, fixture_clip):
    """VideoSegmenter in bf16 against the official model's fp32 logits on the same frames (the fixture's; the fp32
    segmenter reproduces them, test_official_preset_with_flow_pictures_matches_the_official_code)."""
    from pipeline.segment import VideoSegmenter

    # Frames 0-3: frame 0 alone, then memory reads of 1, 2 and 3 entries (T=3); kept short for CI time.
    pairs = list(zip(fixture_clip["frames"][:4], fixture_clip["flows"][:4], strict=True))
    logits = np.load(FIXTURE / "expected_T3.npz")["logits_full"][:4, 0]  # (4, 512, 512), fp32
    fp32 = logits > 0
    segmenter = VideoSegmenter(
        official_checkpoint, flow="pictures", memory_size=3, precision="bf16", device="cpu"
    )
    assert segmenter.dtype == torch.bfloat16
    results = list(segmenter.segment(iter(pairs)))
    assert [i for i, _, _ in results] == list(range(4))
    for i, bf16, _ in results:
        agreement = float((fp32[i] == bf16).mean())
        print(f"frame {i}: bf16/fp32 mask agreement {agreement:.5f}, foreground {fp32[i].mean():.3f}")
        assert agreement >= 0.995, f"frame {i}: bf16 masks agree with fp32 on {agreement:.4%} of pixels"
    # bf16 really ran: the probabilities are not fp32's (a silent fp32 fallback would match them to ~1e-6)
    reference = torch.sigmoid(torch.from_numpy(logits)).numpy()
    assert max(float(np.abs(prob - reference[i]).max()) for i, _, prob in results) > 1e-4
