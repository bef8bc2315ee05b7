"""Parity with the official HMHI-Net: fixture weights through the official-checkpoint path, judged by compare.py.

The fixture (../shared/fixtures/official_hmhi) holds the official key list, its deterministic weight rule, a
6-frame 512x512 clip and the official model's outputs with T=3 (eval, fp32, CPU). The fixture's own compare.py
is run as a subprocess, so its tolerances are applied exactly as written there.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from model import create_model, load_checkpoint

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _normalise(u8: np.ndarray) -> torch.Tensor:
    """(L, H, W, 3) uint8 -> (1, L, 3, H, W) float32, exactly as the fixture README prescribes."""
    x = u8.astype(np.float32) / np.float32(255)
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))[None]


@pytest.mark.slow  # the full official model in fp32: over a minute on 2 cores
def test_official_parity_T3(official_fixture_dir, official_weights, tmp_path):
    keys = json.loads((official_fixture_dir / "keys.json").read_text())
    state = official_weights(0)
    # As a DDP-trained official file: {'network': ...} with 'module.' prefixes, plus training extras.
    ckpt = tmp_path / "official_seed0.pth"
    torch.save({"network": {f"module.{k}": v for k, v in state.items()}, "epoch": 7}, ckpt)

    net = create_model("hmhi_mit_b1", memory_size=3).eval()
    report = load_checkpoint(net, ckpt)  # strict
    assert report.format == "official"
    assert sorted(report.dropped) == sorted(f"module.{k}" for k in keys["dead_keys"])
    assert set(report.loaded) == set(net.state_dict())  # no parameter of ours left unloaded
    assert len(report.loaded) + len(report.dropped) == keys["num_tensors"]  # every official key accounted for
    assert not report.unexpected and not report.missing and report.meta.get("epoch") == 7

    clip = np.load(official_fixture_dir / "inputs.npz")
    frames, flows = _normalise(clip["frames"]), _normalise(clip["flows"])
    trace: dict[str, torch.Tensor] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the fixture was made with 2 threads; fp32 summation order stays comparable
    try:
        with torch.inference_mode():
            full, quarter = net.forward_clip(frames, flows, trace=trace)
    finally:
        torch.set_num_threads(threads)

    expected = np.load(official_fixture_dir / "expected_T3.npz")
    mine = {"logits_full": full[0].numpy(), "logits_quarter": quarter[0].numpy()}
    mine.update({name: trace[name].numpy() for name in expected.files if name in trace})
    assert set(expected.files) - {"meta"} <= set(mine), "trace lacks some fixture arrays"
    out = tmp_path / "mine.npz"
    np.savez(out, **mine)
    result = subprocess.run(
        [
            sys.executable,
            str(official_fixture_dir / "compare.py"),
            str(official_fixture_dir / "expected_T3.npz"),
            str(out),
            "--strict",
        ],
        capture_output=True,
        text=True,
    )
    print(result.stdout)
    assert result.returncode == 0, f"compare.py failed:\n{result.stdout}\n{result.stderr}"
    assert result.stdout.strip().endswith("PASS")
