"""Segment settings without a model: the official preset, CPU sizing, the official soft map, and the work list."""

from __future__ import annotations

import numpy as np

from pipeline.config import config_from_dict, config_to_dict
from pipeline.segment.config import SegmentConfig, SegmentModelConfig, SegmentRuntimeConfig
from pipeline.segment.job import work_list
from pipeline.storage import open_storage
from pipeline.summary import JobSummary
from pipeline.transforms import official_soft_map


def test_official_preset_sets_defaults_and_keeps_explicit_values():
    cfg = SegmentConfig(
        input="in",
        output="out",
        preset="official",
        model=SegmentModelConfig(checkpoint="c.pth", precision="bf16"),
    )
    assert (cfg.model.memory_size, cfg.model.input_size, cfg.model.decoder) == (3, 512, "pil")
    assert cfg.model.precision == "bf16"  # given explicitly: the preset does not override it
    assert cfg.outputs.binarize == cfg.outputs.prob_mode == "official_minmax" and cfg.outputs.save_probs
    assert cfg.frames == "annotated"
    again = config_from_dict(SegmentConfig, config_to_dict(cfg))  # the actors rebuild it from a dict
    assert config_to_dict(again) == config_to_dict(cfg)
    plain = SegmentConfig(input="in", output="out", model=SegmentModelConfig(checkpoint="c.pth"))
    assert plain.model.memory_size is None and plain.model.decoder == "opencv" and plain.frames == "all"


def test_actor_cpus_leave_the_decode_share():
    assert SegmentRuntimeConfig(videos_in_flight=4).actor_cpus(2) == 1.6
    assert SegmentRuntimeConfig(videos_in_flight=4, num_actors=2).actor_cpus(16) == 7.6
    assert SegmentRuntimeConfig(videos_in_flight=16).actor_cpus(1) == 1.0  # at least one
    assert SegmentRuntimeConfig(gpus_per_actor=1).actor_cpus(32) == 1.0
    assert SegmentRuntimeConfig(cpus_per_actor=3).actor_cpus(32) == 3
    # Two 2-CPU nodes: the actor must fit on one node, with the decode share left there.
    assert SegmentRuntimeConfig(videos_in_flight=2).actor_cpus(4, node_cpus=2) == 1.8


def test_cpu_actor_torch_threads_round_the_share_up():
    """On 2 cores the actor's 1.9 (or 1.6) CPUs run 2 torch threads, not 1: the decode tasks' 0.1 CPU each is their
    average need, far under a core, and a thread left out idles most of that core (issue 16: 1.9 s vs 1.04 s/frame)."""
    rt = SegmentRuntimeConfig(videos_in_flight=1)
    rt.cpus_per_actor = rt.actor_cpus(2)
    assert (rt.cpus_per_actor, rt.torch_threads()) == (1.9, 2)
    rt = SegmentRuntimeConfig(videos_in_flight=4)
    rt.cpus_per_actor = rt.actor_cpus(2)
    assert (rt.cpus_per_actor, rt.torch_threads()) == (1.6, 2)
    assert SegmentRuntimeConfig(cpus_per_actor=3).torch_threads() == 3  # whole CPUs stay exact
    assert SegmentRuntimeConfig(cpus_per_actor=0.5).torch_threads() == 1
    rt = SegmentRuntimeConfig(videos_in_flight=16)
    rt.cpus_per_actor = rt.actor_cpus(1)
    assert rt.torch_threads() == 1


def test_official_soft_map_is_the_official_formula():
    rng = np.random.default_rng(0)
    prob = rng.uniform(0.43, 0.54, (37, 53)).astype(np.float32)
    sal = (prob - prob.min()) / (prob.max() - prob.min() + 1e-8)  # utils/func.py save_images
    expected = (sal * 255).astype(np.uint8)
    got = official_soft_map(prob)
    assert got.dtype == np.uint8 and np.abs(got.astype(int) - expected).max() <= 1
    assert (got == expected).mean() > 0.999 and got.max() in (254, 255) and got.min() == 0
    assert not official_soft_map(np.full((4, 4), 0.5, np.float32)).any()  # a flat map stays 0, as officially


def test_work_list_is_one_listing_and_a_short_summary(tmp_path):
    corpus, out = open_storage(str(tmp_path / "corpus")), open_storage(str(tmp_path / "out"))
    for k in range(30):
        corpus.write_bytes(f"v{k:02d}.mp4", b"not decoded while listing")
    for k in range(25):
        out.write_json(f"done/v{k:02d}.json", {"frames": 1})
    cfg = SegmentConfig(input=corpus.url, output=out.url, model=SegmentModelConfig(checkpoint="c.pth"))
    summary = JobSummary("segment")
    fmt, todo, found = work_list(cfg, summary, corpus, out)
    assert (fmt, found) == ("videos", 30) and [r["video_id"] for r in todo] == [
        f"v{k:02d}" for k in range(25, 30)
    ]
    assert summary.counts["video"]["skipped"] == 25 and len(summary.skipped_items) == 20
    assert summary.figures["skipped_not_listed"] == 5
