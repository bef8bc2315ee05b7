"""Job utilities: the end-of-job summary is complete, printed, and written atomically to storage."""

from __future__ import annotations

from pipeline.storage import open_storage
from pipeline.summary import JobSummary


def test_summary_counts_reasons_and_file(storage_url, capsys):
    summary = JobSummary("demo")
    summary.done("video", "bear", frames=82)
    summary.done("video", "cows", frames=104)
    summary.skipped("video", "boat", reason="already done")
    summary.rejected("video", "bad clip", reason="bad clip/00003.jpg: truncated JPEG")
    summary.add("bytes_written", 1234)
    d = summary.finish(storage=open_storage(storage_url), rel="summary.json")

    assert d["counts"]["video"] == {"done": 2, "skipped": 1, "rejected": 1}
    assert d["figures"] == {"frames": 186, "bytes_written": 1234}
    assert d["rejected"] == [
        {"kind": "video", "name": "bad clip", "reason": "bad clip/00003.jpg: truncated JPEG"}
    ]
    out = capsys.readouterr().out
    assert "4 in: 2 done, 1 skipped, 1 rejected" in out and "truncated JPEG" in out
    assert open_storage(storage_url).read_json("summary.json") == d


def test_job_command_line_reports_config_errors_in_one_line(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    proc = subprocess.run(
        [
            sys.executable,
            "jobs/evaluate.py",
            "--pred",
            str(tmp_path),
            "--gt",
            str(tmp_path),
            "--protocol",
            "davis2099",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "error: config field 'protocol' = 'davis2099'" in proc.stderr


def test_summary_prints_durations_sizes_and_rates_by_their_names(capsys):
    from pipeline.summary import format_figure

    summary = JobSummary("demo")
    summary.add("driver_wait_s", 3.013183602000254)
    summary.add("train_s", 125.4)
    summary.add("bytes_written", 37980160)
    summary.add("frames", 1234)
    summary.set("frames_per_s", 19.3456)
    summary.set("final_loss", 0.451234)
    summary.set("output", "s3://bucket/shards")
    d = summary.finish()
    lines = {line.split()[0]: line.split(None, 1)[1] for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["driver_wait_s"] == "3.0 s"
    assert lines["train_s"] == "2 min 05 s"
    assert lines["bytes_written"] == "38.0 MB"
    assert lines["frames"] == "1,234"
    assert lines["frames_per_s"] == "19.3/s"
    assert lines["final_loss"] == "0.4512"
    assert lines["output"] == "s3://bucket/shards"
    # summary.json keeps the plain numbers (seconds, bytes)
    assert d["figures"]["bytes_written"] == 37980160 and d["figures"]["driver_wait_s"] == 3.013183602000254
    # a total is never shown as a rate, and the larger units
    assert "/s" not in lines["bytes_written"] and "/s" not in lines["driver_wait_s"]
    assert format_figure("bytes_read", 1.2e9) == "1.20 GB" and format_figure("shard_bytes", 512) == "512 B"
    assert format_figure("elapsed_s", 3725) == "1 h 02 min" and format_figure("decode_s", 0.012) == "0.012 s"
    assert format_figure("val_JF_mean", float("nan")) == "nan"


def test_job_failed_is_one_line_and_exit_status_1(capsys):
    from pipeline.cli import run_job_main
    from pipeline.errors import JobFailed, UserError

    def failing(argv):
        raise JobFailed("training run s3://b/runs/x failed: worker died", summary={"job": "train"})

    def bad_input(argv):
        raise UserError("shard index of s3://b/shards cannot be read")

    assert run_job_main(failing, []) == 1
    assert capsys.readouterr().err == "failed: training run s3://b/runs/x failed: worker died\n"
    assert run_job_main(bad_input, []) == 2
    assert capsys.readouterr().err == "error: shard index of s3://b/shards cannot be read\n"
    assert run_job_main(lambda argv: {"job": "ok"}, []) == 0


def test_quiet_frameworks_silences_the_ddp_stride_notice_only():
    import warnings

    from pipeline.runtime import quiet_frameworks

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_frameworks()
        warnings.warn(
            "Grad strides do not match bucket view strides. This may indicate grad was not created "
            "according to the gradient layout contract",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn("something the user should see", UserWarning, stacklevel=1)
    messages = [str(w.message) for w in caught]
    assert "something the user should see" in messages
    assert not any("Grad strides" in m for m in messages)


def test_keep_freed_memory_keeps_a_step_s_blocks_in_the_heap_for_the_next_step():
    """After ``keep_freed_memory`` a 24 MiB block comes from the heap rather than its own mmap and stays there
    once freed, so a step that holds three of them at once faults no page in after warm-up. With glibc's
    defaults the first such block is mmapped and unmapped when freed (whether later steps fault depends on its
    adaptive thresholds: 0 to 18,000 faults per step here, ~108,000 per 512x512 HMHI-Net frame, measured in
    bench/RESULTS.md). Each case runs in a fresh process (malloc settings are per process)."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    script = """
import ctypes, json, resource, sys
from pipeline.runtime import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

# The C library's own malloc, as torch's CPU allocator calls it (numpy would ask for huge pages for large arrays,
# which hides the effect; torch itself costs seconds to import).
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 24 << 20
def allocate():
    block = libc.malloc(SIZE)
    ctypes.memset(block, 1, SIZE)  # written: every page touched
    return block
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
start = libc.mallinfo2()
block = allocate()
mmapped_while_held = libc.mallinfo2().hblkhd - start.hblkhd
libc.free(block)
heap_after_free = libc.mallinfo2().arena - start.arena
def step():
    buffers = [allocate() for _ in range(3)]
    for b in buffers:
        libc.free(b)
for _ in range(5):  # warm-up: the heap grows to the step's peak
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "mmapped": mmapped_while_held, "heap": heap_after_free, "faults": faults}))
"""
    import json

    runs = {}
    for mode in ("default", "keep"):
        out = subprocess.run(
            [sys.executable, "-c", script, mode], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout
        runs[mode] = json.loads(out.strip().splitlines()[-1])
    assert runs["keep"]["applied"] is True  # glibc (Linux CI)
    assert runs["default"]["mmapped"] >= 24 << 20, (
        runs
    )  # glibc's default: a block this size gets its own mmap
    assert runs["keep"]["mmapped"] < 1 << 20, runs  # kept: served from the heap ...
    assert runs["keep"]["heap"] >= 24 << 20, runs  # ... and still there once freed
    assert runs["keep"]["faults"] < 200, runs  # 20 steps of 3 x 24 MiB: no page faulted in again
