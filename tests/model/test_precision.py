"""bf16 inference accuracy guard (issue 16): bf16 masks agree with fp32 masks on the official fixture's clip.

The fp32 reference is the official model's own output in the fixture (``expected_T3.npz``, which our fp32 path
reproduces within 1e-4, see test_parity.py), so this test runs only the bf16 path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import autocast, create_model, load_checkpoint, native_bf16, resolve_precision
from tests.conftest import requires_native_bf16
from tests.model.test_parity import _normalise

MIN_AGREEMENT = 0.995  # issue 16: per frame, fraction of pixels whose mask (logit > 0) is the same


def test_resolve_precision():
    assert resolve_precision("fp32", "cpu") == torch.float32
    assert resolve_precision("bf16", "cpu") == torch.bfloat16
    assert resolve_precision("auto", "cpu") == (torch.bfloat16 if native_bf16("cpu") else torch.float32)
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cpu")


@requires_native_bf16
def test_bf16_masks_agree_with_fp32_on_fixture_clip(official_fixture_dir, official_weights, tmp_path):
    ckpt = tmp_path / "official_seed0.pth"
    torch.save({"network": official_weights(0)}, ckpt)
    net = create_model("hmhi_mit_b1", memory_size=3).eval()
    load_checkpoint(net, ckpt)
    clip = np.load(official_fixture_dir / "inputs.npz")
    frames, flows = _normalise(clip["frames"])[0], _normalise(clip["flows"])[0]
    reference = np.load(official_fixture_dir / "expected_T3.npz")["logits_full"][:, 0]  # (L, H, W) fp32

    state = net.init_state(1)
    agreement, max_abs = [], []
    for t in range(frames.shape[0]):
        with autocast("cpu", torch.bfloat16):
            logits, state = net.step(frames[t : t + 1], flows[t : t + 1], state)
        assert logits.dtype == torch.float32  # the final logits stay fp32 under autocast
        mine = logits[0, 0].numpy()
        agreement.append(float(((mine > 0) == (reference[t] > 0)).mean()))
        max_abs.append(float(np.abs(mine - reference[t]).max()))
    print(
        "bf16 vs fp32 mask agreement per frame:", [round(a, 5) for a in agreement], "max |dlogit|:", max_abs
    )
    assert min(agreement) >= MIN_AGREEMENT, agreement
    # bf16 really ran (a silent fp32 fallback would agree to 1e-4 like the parity test)
    assert max(max_abs) > 1e-4
