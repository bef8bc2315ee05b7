"""Fixtures for the model tests: the official-fixture folder and its weight rule."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
OFFICIAL_FIXTURE_DIR = (REPO_ROOT / ".." / "shared" / "fixtures" / "official_hmhi").resolve()


@pytest.fixture(scope="session")
def official_fixture_dir() -> Path:
    """The official HMHI-Net fixture folder (../shared/fixtures/official_hmhi beside the repository)."""
    needed = ["keys.json", "make_weights.py", "compare.py", "inputs.npz", "expected_T3.npz"]
    missing = [n for n in needed if not (OFFICIAL_FIXTURE_DIR / n).is_file()]
    if missing:
        pytest.fail(
            f"official HMHI-Net fixture missing: {OFFICIAL_FIXTURE_DIR} lacks {missing}; it must sit at "
            f"<repo>/../shared/fixtures/official_hmhi",
            pytrace=False,
        )
    return OFFICIAL_FIXTURE_DIR


@pytest.fixture(scope="session")
def official_weights(official_fixture_dir):
    """builder(seed) -> the official state dict made by the fixture's own weight rule (make_weights.py)."""
    spec = importlib.util.spec_from_file_location(
        "official_make_weights", official_fixture_dir / "make_weights.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cache: dict[int, dict] = {}

    def build(seed: int = 0) -> dict[str, torch.Tensor]:
        if seed not in cache:
            cache[seed] = module.build_state_dict(str(official_fixture_dir / "keys.json"), seed)
        return dict(cache[seed])

    return build
