"""Checkpoint formats: official HMHI-Net, NVlabs MiT ImageNet weights, this project's own; loud errors."""

from __future__ import annotations

import io
import json
import pickle

import pytest
import torch

from model import CheckpointError, create_model, load_checkpoint, model_from_checkpoint, save_checkpoint
from tests.model.helpers import random_clip, tiny_model


@pytest.fixture(scope="module")
def b1():
    return create_model("hmhi_mit_b1", memory_size=3)


def _official_file(tmp_path, state, name="official.pth", prefix="module.", wrap=True):
    path = tmp_path / name
    sd = {f"{prefix}{k}": v for k, v in state.items()}
    torch.save({"network": sd, "epoch": 1, "optimizer": {}} if wrap else sd, path)
    return path


def test_official_checkpoint_every_key_mapped(b1, official_weights, official_fixture_dir, tmp_path):
    state = official_weights(1)
    keys = json.loads((official_fixture_dir / "keys.json").read_text())
    for prefix, wrap in (("module.", True), ("", True), ("", False)):
        report = load_checkpoint(b1, _official_file(tmp_path, state, prefix=prefix, wrap=wrap))
        assert report.format == "official" and report.ok
        assert sorted(report.dropped) == sorted(prefix + k for k in keys["dead_keys"])
        assert len(report.loaded) == len(b1.state_dict()) == keys["num_tensors"] - len(keys["dead_keys"])
    # spot-check the explicit map on each part of the network
    own = b1.state_dict()
    pairs = {
        "backbone.block2.1.attn.kv_adapter.up_proj.weight": "backbone.stages.1.blocks.1.attn.kv_adapter.up_proj.weight",
        "backbone.patch_embed3.norm.bias": "backbone.stages.2.downsample.norm.bias",
        "backbone.block1.0.mlp.dwconv.dwconv.weight": "backbone.stages.0.blocks.0.mlp.dwconv.weight",
        "backbone.norm4.weight": "backbone.stages.3.norm.weight",
        "decode_head.conv1.conv.weight": "decoder.stages.0.lateral.0.weight",  # conv1 reads level 3
        "decode_head.cbam4.conv3.1.conv.weight": "decoder.stages.3.cbam.spatial.2.weight",
        "Mem0.pixel_transformer.layers.0.cross_attn_image.k_proj.weight": "pixel_memory.readout.cross_attn.k_proj.weight",
        "Mem1.memory_encoder.fuser.layers.1.gamma": "semantic_memory.encoder.fuser.1.gamma",
        "obj_to_pixel.norm.weight": "sgim.readout.norm.weight",
        "pixel_down_sample.1.conv.bias": "plam.down.2.bias",
        "pixel_to_obj_cbam.conv2.1.conv.weight": "plam.cbam.channel_mlp.2.weight",
        "p2o_down_linear.conv.weight": "plam.fuse.0.weight",
    }
    for official, native in pairs.items():
        assert torch.equal(own[native], state[official]), official
    # the dead copy is NOT mapped onto the live cross-attention
    assert not torch.equal(
        own["pixel_memory.readout.cross_attn.q_proj.weight"], state["Mem0.cross_attention.q_proj.weight"]
    )


def test_official_checkpoint_errors_name_file_and_keys(b1, official_weights, tmp_path):
    state = official_weights(1)
    missing = dict(state)
    del missing["decode_head.blend3.conv.bias"]
    path = _official_file(tmp_path, missing, "missing_key.pth")
    with pytest.raises(
        CheckpointError, match=r"missing_key\.pth.*missing: decoder\.stages\.2\.blend\.0\.bias"
    ):
        load_checkpoint(b1, path)
    report = load_checkpoint(b1, path, strict=False)
    assert report.missing == ["decoder.stages.2.blend.0.bias"] and not report.ok

    extra = dict(state, **{"Mem2.foo.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"extra_key\.pth.*unexpected: module\.Mem2\.foo\.weight"):
        load_checkpoint(b1, _official_file(tmp_path, extra, "extra_key.pth"))

    wrong = dict(state, **{"obj_reduce.0.weight": torch.zeros(64, 512)})
    with pytest.raises(
        CheckpointError, match=r"wrong_shape\.pth.*obj_reduce\.0\.weight: \(64, 512\) vs model \(128, 512\)"
    ):
        load_checkpoint(b1, _official_file(tmp_path, wrong, "wrong_shape.pth"))

    # an official MiT-B1 checkpoint does not fit a B0 model: named shape mismatches, nothing loaded
    b0 = tiny_model()
    before = {k: v.clone() for k, v in b0.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"b1_into_b0\.pth.*shape_mismatch"):
        load_checkpoint(b0, _official_file(tmp_path, state, "b1_into_b0.pth"))
    assert all(torch.equal(before[k], v) for k, v in b0.state_dict().items())


def test_truncated_and_foreign_files(tmp_path):
    net = tiny_model()
    good = tmp_path / "good.pth"
    save_checkpoint(net, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth: not a readable torch checkpoint"):
        load_checkpoint(net, truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"garbage\.pth"):
        load_checkpoint(net, garbage)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        load_checkpoint(net, tmp_path / "nowhere.pth")
    # mmsegmentation-converted MiT weights match no key: refused, first keys named
    mmseg = tmp_path / "mmseg_mit.pth"
    torch.save({"state_dict": {"backbone.layers.0.0.projection.weight": torch.zeros(1)}}, mmseg)
    with pytest.raises(
        CheckpointError, match=r"mmseg_mit\.pth: unrecognised.*backbone\.layers\.0\.0\.projection"
    ):
        load_checkpoint(net, mmseg)


class _Payload:
    """Not a tensor: a pickle that would run code on load without weights_only."""

    def __reduce__(self):
        return (print, ("executed",))


def test_weights_only_refuses_arbitrary_pickles(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"network": _Payload()}, f, pickle_module=pickle)
    with pytest.raises(CheckpointError, match=r"evil\.pth"):
        load_checkpoint(tiny_model(), path)


def test_mit_imagenet_weights_fill_the_backbone_only(b1, official_weights, tmp_path):
    state = official_weights(2)
    # NVlabs SegFormer ImageNet layout: MiT names without prefix, a classifier head, no adapters
    mit = {
        k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.") and "adapter" not in k
    }
    mit["head.weight"], mit["head.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    path = tmp_path / "mit_b1.pth"
    torch.save(mit, path)
    net = create_model("hmhi_mit_b1")
    adapters_before = net.state_dict()["backbone.stages.0.blocks.0.adapter.up_proj.weight"].clone()
    report = load_checkpoint(net, path)
    assert report.format == "mit_imagenet" and report.ok
    assert len(report.loaded) == 176 and sorted(report.ignored) == ["head.bias", "head.weight"]
    own = net.state_dict()
    assert torch.equal(
        own["backbone.stages.3.blocks.1.attn.kv.weight"], state["backbone.block4.1.attn.kv.weight"]
    )
    assert torch.equal(own["backbone.stages.0.blocks.0.adapter.up_proj.weight"], adapters_before)
    assert "decoder.predictor.weight" in report.not_in_format

    del mit["block3.1.mlp.fc2.bias"]
    torch.save({"state_dict": mit}, path)  # also inside a 'state_dict' wrapper
    with pytest.raises(
        CheckpointError, match=r"mit_b1\.pth.*missing: backbone\.stages\.2\.blocks\.1\.mlp\.fc2\.bias"
    ):
        load_checkpoint(net, path)


def test_own_format_round_trip(tmp_path):
    net = tiny_model(memory_size=2).eval()
    path = tmp_path / "ckpts" / "epoch3.pth"
    save_checkpoint(net, path, extra={"epoch": 3, "metrics": {"J&F": 0.5}})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "hmhi-uvos" and raw["version"] == 1 and raw["model_name"] == "hmhi_mit_b0"
    assert raw["model_kwargs"]["decoder_width"] == 32 and raw["epoch"] == 3

    fresh = tiny_model(seed=5, memory_size=2).eval()
    report = load_checkpoint(fresh, path)
    assert report.format == "hmhi-uvos" and report.ok and report.meta["metrics"] == {"J&F": 0.5}
    frames, flows = random_clip(1, 3, size=64)
    with torch.inference_mode():
        torch.testing.assert_close(
            fresh.forward_clip(frames, flows)[0], net.forward_clip(frames, flows)[0], atol=0, rtol=0
        )
    rebuilt, report = model_from_checkpoint(path, memory_size=3)
    assert rebuilt.config.memory_size == 3 and rebuilt.config.decoder_width == 32 and report.ok

    buffer = io.BytesIO()
    save_checkpoint(net, buffer)
    buffer.seek(0)
    assert load_checkpoint(fresh, buffer).ok

    with pytest.raises(
        CheckpointError, match=r"epoch3\.pth: checkpoint is for model 'hmhi_mit_b0', not 'hmhi_mit_b1'"
    ):
        load_checkpoint(create_model("hmhi_mit_b1", decoder_width=32, readout_ffn_dim=64), path)
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(net, tmp_path / "x.pth", extra={"model": 1})
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["epoch3.pth"]  # no temp files left
