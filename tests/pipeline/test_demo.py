"""The demo driver's own pieces: J&F on paused/occluded frames from evaluate's per_frame.csv, the demo summary that
points at evaluate's report.html, the config checks. (The stages it runs are the real jobs, tested in tests/jobs/.)"""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError
from pipeline.demo import DemoConfig, _demo_summary, slice_scores


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
