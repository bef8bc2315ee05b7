"""Flow engines: DIS recovers a known motion; ptlflow models run with random weights and load local checkpoints."""

import numpy as np
import pytest
import torch

from pipeline.flow.engines import create_flow_engine, flow_pairs, list_flow_engines
from tests.media import make_scene


@pytest.fixture(scope="module")
def scene():
    # The background pans so that frame t+1 shows content shifted by (-2, -1) px: forward flow ~ (-2, -1).
    frames, masks = make_scene(5, (96, 160), seed=3)
    return frames, masks


def _background_flow(flow, mask):
    return flow[~mask].mean(0)


def test_pairs_are_forward_then_backward_for_the_last_frame():
    assert flow_pairs(4) == [(0, 1), (1, 2), (2, 3), (3, 2)]
    with pytest.raises(ValueError, match="at least 2 frames"):
        flow_pairs(1)


@pytest.mark.parametrize("preset", ["fast", "medium"])
def test_dis_recovers_the_background_motion(scene, preset):
    frames, masks = scene
    engine = create_flow_engine("dis", preset=preset)
    flows = engine.compute(frames)
    assert flows.shape == (5, 96, 160, 2) and flows.dtype == np.float32
    # Ignore the object and a border where content enters the frame.
    inner = np.zeros(masks.shape[1:], bool)
    inner[12:-12, 12:-12] = True
    for t in range(4):
        sel = inner & ~masks[t] & ~masks[t + 1]
        np.testing.assert_allclose(flows[t][sel].mean(0), [-2.0, -1.0], atol=0.35)
    sel = inner & ~masks[4] & ~masks[3]
    np.testing.assert_allclose(
        flows[4][sel].mean(0), [2.0, 1.0], atol=0.35
    )  # backward flow of the last frame
    assert engine.provenance["engine"] == "dis" and engine.provenance["model"] == f"dis_{preset}"


def test_dis_max_side_resizes_and_rescales_flow(scene):
    frames, masks = scene
    small = create_flow_engine("dis", max_side=80).compute(frames)  # flow at 48x80, vectors scaled back x2
    assert small.shape == (5, 96, 160, 2)
    inner = np.zeros(masks.shape[1:], bool)
    inner[16:-16, 16:-16] = True
    sel = inner & ~masks[0] & ~masks[1]
    np.testing.assert_allclose(small[0][sel].mean(0), [-2.0, -1.0], atol=0.5)


def test_bad_arguments_are_clear_errors(tmp_path):
    assert "dis" in list_flow_engines()
    with pytest.raises(ValueError, match="preset"):
        create_flow_engine("dis", preset="slowest")
    with pytest.raises(ValueError, match="CPU only"):
        create_flow_engine("dis", device="cuda")
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\) uint8"):
        create_flow_engine("dis").compute(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="unknown flow model 'no_such_model'"):
        create_flow_engine("no_such_model", random_init=True)
    with pytest.raises(ValueError, match="needs a checkpoint"):
        create_flow_engine("rapidflow_it1")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        create_flow_engine("rapidflow_it1", checkpoint=str(tmp_path / "missing.ckpt"))


def test_ptlflow_random_weights_and_local_checkpoint_round_trip(scene, tmp_path):
    frames, _ = scene
    torch.manual_seed(0)
    engine = create_flow_engine("rapidflow_it1", random_init=True, max_side=64, batch_size=3)
    flows = engine.compute(frames[:4])
    assert flows.shape == (4, 96, 160, 2) and flows.dtype == np.float32 and np.isfinite(flows).all()
    assert engine.provenance["random_init"] is True and engine.provenance["checkpoint_sha256"] is None

    ckpt = tmp_path / "rapid.ckpt"
    torch.save({"state_dict": engine.net.state_dict()}, ckpt)
    loaded = create_flow_engine("rapidflow_it1", checkpoint=str(ckpt), max_side=64, batch_size=2)
    np.testing.assert_allclose(loaded.compute(frames[:4]), flows, atol=1e-4)  # same weights, other batching
    assert len(loaded.provenance["checkpoint_sha256"]) == 64 and loaded.provenance["random_init"] is False

    bare = tmp_path / "bare.ckpt"
    torch.save(engine.net.state_dict(), bare)
    with pytest.raises(ValueError, match="not in ptlflow's format"):
        create_flow_engine("rapidflow_it1", checkpoint=str(bare))


def test_pictures_engine_reads_instead_of_computing():
    from pipeline.config import ConfigError
    from pipeline.flow.config import FlowConfig

    engine = FlowConfig(engine="pictures").create_engine()
    assert engine.provenance["engine"] == "pictures" and FlowConfig(engine="pictures").uses_pictures
    with pytest.raises(RuntimeError, match="computes nothing"):
        engine.compute(np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ConfigError, match="checkpoint"):
        FlowConfig(engine="pictures", checkpoint="x.ckpt")
