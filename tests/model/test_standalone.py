"""model/ is a standalone package: importable and usable with torch and timm only, without pipeline/ (issue 15)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: a meta-path finder refuses the project's other packages (and Ray, which only the
# pipeline needs) before anything from model/ is imported, so any such import inside model/ fails loudly.
_PROBE = r"""
import sys

BLOCKED = ("pipeline", "jobs", "ray", "yaml")

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked import of {name!r}: model/ must not need it")
        return None

sys.meta_path.insert(0, Block())
from model import create_model, load_checkpoint, resolve_precision  # noqa: F401
import torch

net = create_model("hmhi_mit_b0", decoder_width=32, readout_ffn_dim=64).eval()
state = net.init_state(1)
frame = torch.randn(1, 3, 64, 64)
logits, state = net.step(frame, frame, state)
try:
    create_model("hmhi_mit_b0", memory_size=0)
except ValueError as err:
    print("error:", err)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print("shape:", tuple(logits.shape), "leaked:", leaked)
"""


def test_model_imports_and_runs_without_pipeline():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}  # this checkout's model/, not an installed copy
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "shape: (1, 1, 64, 64) leaked: []" in result.stdout
    assert "memory_size" in result.stdout  # config errors still name the field
