"""ModelSettings: the one home of a model's settings, filled from a checkpoint's record, and what a checkpoint file is
(describe_checkpoint): official files, this project's, and files that are no checkpoint at all."""

from __future__ import annotations

import pytest
import torch

from model import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CheckpointError,
    ModelSettings,
    SettingError,
    describe_checkpoint,
    project_version,
    save_checkpoint,
)
from tests.model.helpers import tiny_model


def test_unset_fields_take_the_record_then_the_official_defaults():
    recorded = ModelSettings(
        name="hmhi_mit_b0", options={"decoder_width": 16}, memory_size=3, input_size=96, mean=(0.5, 0.5, 0.5)
    )
    resolved = ModelSettings().resolved(recorded)
    assert (resolved.name, resolved.options, resolved.memory_size, resolved.input_size) == (
        "hmhi_mit_b0",
        {"decoder_width": 16},
        3,
        96,
    )
    assert (
        resolved.mean == (0.5, 0.5, 0.5) and resolved.std == IMAGENET_STD
    )  # the record has no std: ImageNet's
    official = ModelSettings().resolved(None)
    assert (official.name, official.options, official.memory_size, official.input_size) == (
        "hmhi_mit_b1",
        {},
        5,
        512,
    )
    assert (official.mean, official.std) == (IMAGENET_MEAN, IMAGENET_STD)
    # a set field wins over the record; options given refine the recorded ones
    chosen = ModelSettings(input_size=512, options={"topk": 20}).resolved(recorded)
    assert chosen.input_size == 512 and chosen.options == {"decoder_width": 16, "topk": 20}


def test_conflicts_name_both_values_and_the_architecture_is_an_error():
    recorded = ModelSettings(name="hmhi_mit_b0", options={"decoder_width": 16}, memory_size=3, input_size=96)
    errors, warnings = ModelSettings(input_size=512, memory_size=3).conflicts(recorded)
    assert errors == [] and warnings == [
        "model.input_size is 512 but the checkpoint was trained with 96: using 512"
    ]
    errors, _ = ModelSettings(name="hmhi_mit_b1").conflicts(recorded)
    assert errors == ["model.name is 'hmhi_mit_b1' but the checkpoint holds a 'hmhi_mit_b0' network"]
    errors, _ = ModelSettings(options={"decoder_width": 64}).conflicts(recorded)
    assert "decoder_width 64 vs the checkpoint's 16" in errors[0]
    assert ModelSettings().conflicts(recorded) == ([], [])  # nothing set: nothing to contradict
    assert ModelSettings(input_size=512).conflicts(None) == ([], [])  # an official file records nothing


def test_settings_errors_name_the_field():
    with pytest.raises(SettingError, match="'std'"):
        ModelSettings(std=(0.2, 0.0, 0.2))
    with pytest.raises(SettingError, match="'mean'"):
        ModelSettings(mean=(0.5, 0.5))
    assert ModelSettings(mean=[0.1, 0.2, 0.3]).mean == (0.1, 0.2, 0.3)  # YAML gives lists


def test_describe_checkpoint_reads_the_record_without_building_a_model(tmp_path):
    net = tiny_model()
    path = tmp_path / "ckpt.pth"
    save_checkpoint(
        net,
        str(path),
        settings=ModelSettings(input_size=96).resolved(),
        provenance={"training_data": {"fingerprint": "sha256:0"}},
    )
    info = describe_checkpoint(str(path))
    assert info.format == "hmhi-uvos" and info.whole_model
    assert info.settings.input_size == 96 and info.settings.name == net.model_name
    assert info.settings.memory_size == net.config.memory_size  # the architecture is the network's own
    assert info.provenance == {"training_data": {"fingerprint": "sha256:0"}}
    assert info.project_version == project_version()

    official = tmp_path / "official.pth"
    torch.save({"network": {"decode_head.predictor.conv.weight": torch.zeros(1)}}, official)
    info = describe_checkpoint(str(official))
    assert info.format == "official" and info.settings is None and info.provenance == {}


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"hello, I am a text file\n", "not a readable torch checkpoint"),
        (b"", "not a readable torch checkpoint"),
        ("truncated", "not a readable torch checkpoint"),
        ("not_a_model", "unrecognised checkpoint format"),
    ],
)
def test_a_file_that_is_no_checkpoint_is_one_error_naming_it(tmp_path, content, expected):
    path = tmp_path / "weights.pth"
    if content == "truncated":
        save_checkpoint(tiny_model(), str(path))
        path.write_bytes(path.read_bytes()[:5000])
    elif content == "not_a_model":
        torch.save({"something": torch.zeros(2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected) as caught:
        describe_checkpoint(str(path))
    assert str(path) in str(caught.value) and "\n" not in str(caught.value).strip()
