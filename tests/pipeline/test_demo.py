"""The demo driver's own pieces: J&F on paused/occluded frames from evaluate's per_frame.csv, the demo summary that
points at evaluate's report.html, the config checks. (The stages it runs are the real jobs, tested in tests/jobs/.)"""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError
from pipeline.demo import DemoConfig, _demo_summary, slice_scores
from pipeline.storage import open_storage


def test_slice_scores_pool_paused_and_occluded_frames_without_first_and_last():
    rows = ["sequence,frame,J,F,prediction"]
    for seq, j_of in (("a", lambda t: t / 10), ("b", lambda t: 1.0), ("other", lambda t: 0.0)):
        rows += [f"{seq},{t:05d},{j_of(t)},{j_of(t) / 2},ok" for t in range(6)]
    metas = {
        "a": {"frames": 6, "paused_frames": [0, 2, 3], "occluded_frames": [4, 5]},
        "b": {"frames": 6, "paused_frames": [], "occluded_frames": [1]},
    }
    out = slice_scores("\n".join(rows) + "\n", metas)
    # 'other' has no meta: ignored. Frames 0 and 5 of each sequence are left out (DAVIS-2016).
    assert out["all"]["frames"] == 8
    assert out["paused"]["frames"] == 2 and out["paused"]["J"] == pytest.approx((0.2 + 0.3) / 2)
    assert out["occluded"]["frames"] == 2 and out["occluded"]["J"] == pytest.approx((0.4 + 1.0) / 2)
    assert out["occluded"]["JF"] == pytest.approx((0.7 + 0.35) / 2)
    kept = slice_scores("\n".join(rows) + "\n", metas, drop_first_last=False)
    assert kept["paused"]["frames"] == 3 and kept["all"]["frames"] == 12


@pytest.mark.parametrize(
    "field, value", [("train_steps", 0), ("validate_every", -1), ("flow_preset", "slow"), ("storage", "")]
)
def test_demo_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        DemoConfig(**{field: value})


def test_demo_corpus_settings_are_the_synthetic_config():
    from pipeline.config import load_config
    from pipeline.synthetic import SyntheticConfig

    cfg = load_config(DemoConfig, None, ["corpus.videos=8", "corpus.clutter=0"])
    assert cfg.corpus == SyntheticConfig(videos=8, clutter=0)
    with pytest.raises(ConfigError, match="'corpus.videos'"):
        load_config(DemoConfig, None, ["corpus.videos=1"])
    with pytest.raises(ConfigError, match="'corpus.out'"):
        load_config(DemoConfig, None, ["corpus.out=/tmp/elsewhere"])


def test_demo_summary_is_short_and_points_at_the_evaluate_report(tmp_path):
    from pipeline.storage import open_storage

    root = open_storage(str(tmp_path))
    root.write_json("corpus/Meta/a/meta.json", {"frames": 4, "paused_frames": [1], "occluded_frames": [2]})
    root.write_text(
        "eval/per_frame.csv",
        "sequence,frame,J,F,prediction\n" + "".join(f"a,{t:05d},{0.5 + t / 10},{0.4},ok\n" for t in range(4)),
    )
    report = root.join("eval/report.html")
    root.write_json(
        "eval/summary.json",
        {
            "figures": {
                "JF_mean": 0.5,
                "J_mean": 0.6,
                "F_mean": 0.4,
                "protocol": "davis2016",
                "n_sequences": 1,
                "report": report,
            }
        },
    )
    result = _demo_summary(root, ["a"], {"train": 12.34}, DemoConfig(storage=str(tmp_path)))
    assert result["report"] == report and result["timings_s"] == {"train": 12.3}
    assert result["slices"]["paused"]["J"] == pytest.approx(0.6) and result["slices"]["all"]["frames"] == 2
    assert root.read_json("demo_summary.json")["report"] == report


def test_the_demo_s_stages_are_command_lines_each_job_accepts(tmp_path, monkeypatch):
    """run_demo's five stages in order, each job's command line parsed by that job's own parser (the jobs
    themselves are stubbed: `make demo` runs them for real)."""
    from pipeline import demo
    from pipeline.commands import JOBS
    from pipeline.config import parse_job_args

    calls = []
    monkeypatch.setattr(demo, "_run_job", lambda job, args, stage: calls.append((job, list(args))) or 1.0)
    monkeypatch.setattr(
        demo,
        "generate_corpus",
        lambda cfg: (
            open_storage(cfg.out).write_json("synthetic.json", {"val": ["s1", "s2"]}) or {"counts": {}}
        ),
    )
    monkeypatch.setattr(demo, "_final_model", lambda run: f"{run.url}/best/model.pt")
    monkeypatch.setattr(demo, "_demo_summary", lambda root, val, timings, cfg: dict(timings=timings))
    monkeypatch.setattr(demo, "_print_result", lambda result, started: None)
    cfg = demo.DemoConfig(storage=str(tmp_path / "demo"))
    result = demo.run_demo(cfg)

    assert [job for job, _ in calls] == ["precompute_flow", "train", "segment", "evaluate"]
    assert set(result["timings"]) == {"corpus", "precompute_flow", "train", "segment", "evaluate", "total"}
    parsed = {job: parse_job_args(JOBS[job].config, args, flags=JOBS[job].flags) for job, args in calls}
    root = str(tmp_path / "demo")
    assert parsed["precompute_flow"].output == f"{root}/shards"
    assert parsed["train"].data.url == f"{root}/shards" and parsed["train"].optim.max_steps == cfg.train_steps
    assert parsed["train"].validation.max_samples is None
    assert parsed["segment"].model.checkpoint == f"{root}/runs/{cfg.run_name}/best/model.pt"
    assert parsed["segment"].videos == ["s1", "s2"] and parsed["evaluate"].sequences == ["s1", "s2"]
