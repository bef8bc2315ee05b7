"""Processes that never run the network do not import torch, timm or torchvision (about 6 s of CPU each): the
command line and its argument errors, the evaluate, export and flow jobs (the flow job's workers with DIS, which is
OpenCV), ingest, shards, and model/'s settings. ``model`` resolves its names on first use (PEP 562), and the
modules that run the network import it where they do."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

HEAVY = ("torch", "timm", "torchvision")

LIGHT_MODULES = (
    "model",
    "model.errors",
    "model.architecture",
    "model.settings",
    "model.version",
    "pipeline.cli",
    "pipeline.commands",
    "pipeline.__main__",
    "pipeline.evaluate.job",
    "pipeline.export.job",
    "pipeline.dataset.job",
    "pipeline.dataset.stages",
    "pipeline.flow.engines",
    "pipeline.ingest",
    "pipeline.shards",
    "pipeline.transforms",
    "pipeline.segment.job",
    "pipeline.train.job",
    "jobs.evaluate",
    "jobs.export",
    "jobs.precompute_flow",
    "jobs.segment",
    "jobs.train",
)
"""Modules whose import must not import the network (the jobs that run it import it where they use it)."""

# One fresh interpreter imports the light modules one by one, then does the torch-free work of model/ and a DIS
# flow worker; it names the first step after which a heavy module is loaded.
_PROBE = r"""
import importlib, sys
import numpy as np

HEAVY = {heavy!r}

def check(step):
    loaded = [m for m in HEAVY if m in sys.modules]
    if loaded:
        print(f"{{step}} imported {{loaded}}")
        raise SystemExit(0)

for name in {modules!r}:
    importlib.import_module(name)
    check("import " + name)

import model
from model import IMAGENET_MEAN, PRECISIONS, ModelSettings, SettingError, list_models, project_version
assert "hmhi_mit_b1" in list_models() and project_version() and "bf16" in PRECISIONS and len(IMAGENET_MEAN) == 3
assert ModelSettings(name="hmhi_mit_b0", options={{"decoder_width": 16}}).resolved().input_size == 512
try:
    ModelSettings(name="hmhi_mit_b9")
except SettingError as e:
    assert e.field == "name"
else:
    raise AssertionError("an unknown model name is accepted")
check("model's settings")

from pipeline.flow.engines import create_flow_engine
engine = create_flow_engine("dis")
flow = engine.compute(np.random.default_rng(0).integers(0, 255, (2, 48, 64, 3), dtype=np.uint8))
assert flow.shape[0] == 2, flow.shape
check("a DIS flow worker")
print("light")
"""

# ``python -m pipeline evaluate --no-such-flag``, with what it imported reported on stdout when it exits.
_BAD_FLAG = r"""
import atexit, runpy, sys
atexit.register(lambda: print("heavy:", [m for m in {heavy!r} if m in sys.modules], flush=True))
sys.argv = ["pipeline", "evaluate", "--no-such-flag"]
runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
"""


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}  # this checkout's packages, not an installed copy
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_light_modules_and_model_settings_do_not_import_torch():
    result = _python(_PROBE.format(heavy=HEAVY, modules=LIGHT_MODULES))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "light", result.stdout


def test_a_bad_flag_is_answered_without_importing_torch():
    result = _python(_BAD_FLAG.format(heavy=HEAVY))
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors == ["hmhi-uvos evaluate: error: unrecognized arguments: --no-such-flag"], result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.strip() == "heavy: []", result.stdout


# A job driver's pre-flight reads a checkpoint's record (torch) without building a network (timm, torchvision).
_DESCRIBE = r"""
import sys
from model import describe_checkpoint
info = describe_checkpoint({path!r})
print(info.format, info.settings.name, [m for m in ("timm", "torchvision") if m in sys.modules])
"""


def test_describing_a_checkpoint_imports_torch_but_not_timm(tiny_checkpoint):
    result = _python(_DESCRIBE.format(path=tiny_checkpoint))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["hmhi-uvos", "hmhi_mit_b0", "[]"], result.stdout
