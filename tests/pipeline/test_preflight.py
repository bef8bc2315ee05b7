"""The pre-flight checks (pipeline.preflight) on real folders and a real S3 server: nothing is created, outputs are
probed without a trace, an output never overlaps its input; and local paths made absolute where configs are built."""

from __future__ import annotations

import os

import pytest

from pipeline.preflight import PreflightError, check_disjoint, check_input, check_output, within


def _tree(root) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, n), root) for d, dirs, files in os.walk(root) for n in dirs + files
    )


def test_a_missing_input_is_named_and_never_created(tmp_path):
    missing = tmp_path / "corpsu"
    with pytest.raises(PreflightError, match=f"input {missing}: no such folder"):
        check_input("input", str(missing))
    assert not missing.exists()
    (tmp_path / "clip.jpg").write_bytes(b"x")
    with pytest.raises(PreflightError, match="is a file, not a folder"):
        check_input("input", str(tmp_path / "clip.jpg"))
    with pytest.raises(PreflightError, match="model.checkpoint .*: is a folder, not a file"):
        check_input("model.checkpoint", str(tmp_path), folder=False)
    assert check_input("input", str(tmp_path)).root == str(tmp_path)


def test_an_output_is_probed_and_nothing_is_left(tmp_path):
    before = _tree(tmp_path)
    check_output("output", str(tmp_path / "a" / "b" / "c"))  # would be created: its nearest folder is probed
    check_output("output", str(tmp_path))  # exists: probed inside
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("where", ["proc", "under_a_file", "a_file"])
def test_an_output_that_cannot_be_written_is_one_error_naming_it(tmp_path, where):
    (tmp_path / "notes.txt").write_text("x")
    path = {
        "proc": "/proc/x",  # /proc takes no new folder: FileNotFoundError in every job before
        "under_a_file": str(tmp_path / "notes.txt" / "out"),
        "a_file": str(tmp_path / "notes.txt"),
    }[where]
    with pytest.raises(PreflightError) as caught:
        check_output("output", path)
    assert str(caught.value).startswith(f"output {path}: ") and "\n" not in str(caught.value)
    assert not os.path.exists("/proc/x")


def test_an_output_never_overlaps_an_input(tmp_path):
    corpus, out = str(tmp_path / "corpus"), str(tmp_path / "out")
    for output, relation in ((corpus, "is"), (f"{corpus}/shards", "is inside"), (str(tmp_path), "contains")):
        with pytest.raises(PreflightError, match=f"output .* {relation} input .*corpus"):
            check_disjoint("output", output, {"input": corpus})
    check_disjoint("output", out, {"input": corpus, "model.checkpoint": ""})  # siblings, and no checkpoint
    check_disjoint("output", f"{corpus}2", {"input": corpus})  # a shared prefix is no nesting
    os.makedirs(corpus)
    os.symlink(corpus, tmp_path / "link")
    with pytest.raises(PreflightError, match="is inside"):  # through a symbolic link too
        check_disjoint("output", str(tmp_path / "link" / "out"), {"input": corpus})
    assert not within("s3://b/corpus/x", corpus)  # other schemes never overlap


def test_s3_inputs_and_outputs(s3_bucket, s3_server):
    with pytest.raises(PreflightError, match=f"input {s3_bucket}/corpus: nothing there"):
        check_input("input", f"{s3_bucket}/corpus")
    with pytest.raises(PreflightError, match="output s3://no-such-bucket-h23/out: cannot be written"):
        check_output("output", "s3://no-such-bucket-h23/out")
    check_output("output", f"{s3_bucket}/out")
    bucket = s3_bucket[len("s3://") :]
    assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0  # the probe is gone
    s3_server.client().put_object(Bucket=bucket, Key="corpus/a/1.jpg", Body=b"x")
    check_input("input", f"{s3_bucket}/corpus")
    with pytest.raises(PreflightError, match="is inside"):
        check_disjoint("output", f"{s3_bucket}/corpus/out", {"input": f"{s3_bucket}/corpus"})


def test_job_configs_make_every_local_path_absolute_where_they_are_built(tmp_path, monkeypatch):
    from pipeline.dataset.config import PrecomputeFlowConfig
    from pipeline.evaluate.config import EvaluateConfig
    from pipeline.export.config import ExportConfig
    from pipeline.segment.config import SegmentConfig, SegmentModelConfig
    from pipeline.train.config import DataConfig, ModelConfig, TrainConfig

    monkeypatch.chdir(tmp_path)
    here = str(tmp_path)
    train = TrainConfig(
        storage="runs",
        run_name="r",
        data=DataConfig(url="file://shards"),
        model=ModelConfig(init_checkpoint="init.pt"),
    )
    assert (train.storage, train.data.url, train.model.init_checkpoint) == (
        f"{here}/runs",
        f"{here}/shards",
        f"{here}/init.pt",
    )
    seg = SegmentConfig(input="corpus", output="seg", model=SegmentModelConfig(checkpoint="m.pt"))
    assert (seg.input, seg.output, seg.model.checkpoint) == (f"{here}/corpus", f"{here}/seg", f"{here}/m.pt")
    flow = PrecomputeFlowConfig(input="corpus", output="s3://bucket/shards/")
    assert (flow.input, flow.output) == (f"{here}/corpus", "s3://bucket/shards")
    ev = EvaluateConfig(pred="seg/masks", gt="corpus", output="eval")
    assert (ev.pred, ev.gt, ev.output, ev.frames) == (
        f"{here}/seg/masks",
        f"{here}/corpus",
        f"{here}/eval",
        "",
    )
    assert ExportConfig(input="seg").input == f"{here}/seg"
