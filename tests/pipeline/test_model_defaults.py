"""Checkpoints that know their model: segment's pre-flight, VideoSegmenter and train's --init-checkpoint take their
defaults from a checkpoint's record; a flag that contradicts it is honoured with one warning naming both values; an
architecture the weights cannot fit is an error before any work."""

from __future__ import annotations

import logging

import pytest
import torch

from model import CheckpointError, ModelSettings, create_model, save_checkpoint

TRAINED_FLOW = {"engine": "dis", "preset": "fast", "max_side": 256, "checkpoint_sha256": None}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> str:
    """A tiny checkpoint trained (as its record says) at 64 px with T=3, on DIS 'fast' flow at 256 px."""
    torch.manual_seed(0)
    net = create_model(
        "hmhi_mit_b0", decoder_width=16, readout_ffn_dim=32, semantic_mask_hidden=16, memory_size=3
    )
    path = str(tmp_path_factory.mktemp("recorded") / "model.pt")
    save_checkpoint(
        net,
        path,
        settings=ModelSettings(input_size=64, precision="fp32").resolved(),
        provenance={"training_data": {"fingerprint": "sha256:0", "flow": TRAINED_FLOW}},
    )
    return path


def test_video_segmenter_takes_its_settings_from_the_record(recorded, caplog):
    from pipeline.segment import VideoSegmenter

    with caplog.at_level(logging.WARNING):
        segmenter = VideoSegmenter(recorded, device="cpu")
    model, flow = segmenter.cfg.model, segmenter.cfg.flow
    assert (model.name, model.input_size, model.memory_size) == ("hmhi_mit_b0", 64, 3)
    assert (flow.engine, flow.preset, flow.max_side) == ("dis", "fast", 256)
    assert segmenter.preprocessing.input_size == 64 and not caplog.records
    assert segmenter.provenance["defaults"] == "checkpoint record"
    frames = (torch.rand(3, 40, 48, 3) * 255).to(torch.uint8).numpy()
    assert [index for index, _, _ in segmenter.segment(list(frames))] == [0, 1, 2]


def test_video_segmenter_honours_a_contradicting_option_with_a_warning(recorded, caplog):
    from pipeline.segment import VideoSegmenter

    with caplog.at_level(logging.WARNING):
        segmenter = VideoSegmenter(recorded, flow="dis", input_size=128, device="cpu")
    assert segmenter.cfg.model.input_size == 128 and segmenter.cfg.flow.preset == "fast"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"{recorded}: model.input_size is 128 but the checkpoint was trained with 64: using 128"
    ]
    with pytest.raises(
        CheckpointError, match="model.name is 'hmhi_mit_b1' but the checkpoint holds a 'hmhi_mit_b0'"
    ):
        VideoSegmenter(recorded, model="hmhi_mit_b1", device="cpu")


def test_segment_preflight_resolves_the_settings_once_on_the_driver(recorded, tmp_path, caplog):
    from pipeline.segment.config import SegmentConfig, SegmentModelConfig
    from pipeline.segment.job import preflight
    from pipeline.synthetic import SyntheticConfig, generate_corpus

    generate_corpus(SyntheticConfig(out=str(tmp_path / "corpus"), videos=1, frames=6, size="32x32"))
    cfg = SegmentConfig(
        input=str(tmp_path / "corpus"),
        output=str(tmp_path / "out"),
        model=SegmentModelConfig(checkpoint=recorded, memory_size=5),
    )
    with caplog.at_level(logging.WARNING):
        preflight(cfg)
    assert (cfg.model.input_size, cfg.model.memory_size, cfg.flow.preset) == (64, 5, "fast")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"{recorded}: model.memory_size is 5 but the checkpoint was trained with 3: using 5"
    ]
    assert not (tmp_path / "out").exists()  # the pre-flight writes nothing


def test_train_init_checkpoint_gives_the_architecture_and_sizes(recorded, tmp_path, caplog):
    from pipeline.train.config import ModelConfig, TrainConfig
    from pipeline.train.job import TrainInputError, check_init_checkpoint

    cfg = TrainConfig(storage=str(tmp_path), run_name="r", model=ModelConfig(init_checkpoint=recorded))
    check_init_checkpoint(cfg)
    assert (
        cfg.model.name,
        cfg.model.options["decoder_width"],
        cfg.model.memory_size,
        cfg.model.input_size,
    ) == (
        "hmhi_mit_b0",
        16,
        3,
        64,
    )
    wider = TrainConfig(
        storage=str(tmp_path),
        run_name="r",
        model=ModelConfig(init_checkpoint=recorded, options={"decoder_width": 32}),
    )
    with pytest.raises(TrainInputError, match="decoder_width 32 vs the checkpoint's 16"):
        check_init_checkpoint(wider)
    bigger = TrainConfig(
        storage=str(tmp_path), run_name="r", model=ModelConfig(init_checkpoint=recorded, input_size=128)
    )
    with caplog.at_level(logging.WARNING):
        check_init_checkpoint(bigger)
    assert bigger.model.input_size == 128
    assert "model.input_size is 128 but the checkpoint was trained with 64" in caplog.text
