"""The suite runner of ``make test`` (tests/parallel.py): which arguments name tests, and the combined exit status."""

from __future__ import annotations

import pytest

from tests.parallel import (
    FAST_SELECTION,
    NO_TESTS_COLLECTED,
    REPO_ROOT,
    combined_status,
    is_recap_line,
    names_tests,
    run_groups,
    suite_groups,
)


def test_paths_and_node_ids_name_tests_options_do_not():
    assert names_tests(["tests/jobs/test_train.py"])
    assert names_tests(["-q", "tests/faults/test_lease.py::test_stale_lease_is_taken_over"])
    assert not names_tests(["-q", "-k", "lease", "--durations=0"])
    assert not names_tests(["-p", "no:cacheprovider"])


def test_a_failing_group_fails_the_suite_and_an_empty_selection_in_one_group_does_not():
    assert combined_status([0, 0]) == 0
    assert combined_status([0, 1]) == 1 and combined_status([1, 0]) == 1
    assert combined_status([NO_TESTS_COLLECTED, 0]) == 0  # a -k matching tests of one group only
    assert combined_status([NO_TESTS_COLLECTED, 1]) == 1
    assert combined_status([NO_TESTS_COLLECTED, NO_TESTS_COLLECTED]) == NO_TESTS_COLLECTED
    assert combined_status([4, 4]) == 4  # a usage error


def test_the_recap_keeps_failures_and_final_lines_only():
    assert is_recap_line("FAILED tests/faults/test_lease.py::test_x - AssertionError: boom\n")
    assert is_recap_line("ERROR tests/jobs/test_train.py::test_y - RuntimeError\n")
    assert is_recap_line("=========== 3 failed, 497 passed, 2 skipped, 87 warnings in 862.36s (0:14:22) ===")
    assert is_recap_line("============================ no tests ran in 0.01s =============================")
    assert not is_recap_line(
        "=========================== short test summary info ============================"
    )
    assert not is_recap_line("tests/faults/test_lease.py ..F..                                     [ 10%]")
    assert not is_recap_line(
        "23.56s call     tests/jobs/test_segment.py::test_segment_videos_with_a_corrupt_one"
    )


@pytest.mark.integration  # two pytest processes
def test_the_run_ends_with_what_failed_in_either_group(tmp_path, capsys):
    (tmp_path / "test_ok.py").write_text("def test_ok():\n    pass\n")
    (tmp_path / "test_bad.py").write_text("def test_bad():\n    assert 1 == 2\n")
    groups = {"first": [str(tmp_path / "test_bad.py")], "second": [str(tmp_path / "test_ok.py")]}
    status = run_groups(groups, ["-p", "no:cacheprovider", "-q", f"--rootdir={tmp_path}"])
    assert status == 1
    out = capsys.readouterr().out
    recap = out[out.index("recap of the groups:") :].splitlines()[1:]
    assert recap[0] == "[first] exit status 1"
    assert any(line.startswith("[first] FAILED") and "test_bad.py::test_bad" in line for line in recap)
    assert any(line.startswith("[first] ") and "1 failed" in line for line in recap)
    assert "[second] exit status 0" in recap
    assert any(line.startswith("[second] ") and "1 passed" in line for line in recap)
    kept = [line for line in recap if "temp dir" in line]  # the failing group's, not the passing one's
    assert len(kept) == 1 and kept[0].startswith("[first] ")


def _selects(args: list[str], test_file: str) -> bool:
    """Whether pytest run with these paths and ``--ignore``s collects ``test_file`` (a path relative to the repo)."""
    paths = [a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] != "-m")]
    ignored = [a.split("=", 1)[1] for a in args if a.startswith("--ignore=")]
    under = lambda folder: test_file == folder or test_file.startswith(folder.rstrip("/") + "/")  # noqa: E731
    return any(under(p) for p in paths) and not any(under(i) for i in ignored)


@pytest.mark.parametrize("fast", [False, True])
def test_every_test_file_is_in_exactly_one_group(fast):
    files = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "tests").rglob("test_*.py"))
    groups = suite_groups(fast)
    for test_file in files:
        holders = [name for name, args in groups.items() if _selects(args, test_file)]
        if fast and not _selects(list(FAST_SELECTION) + ["tests"], test_file):
            assert holders == [], test_file  # tests/jobs, tests/infra: integration only, not in test-fast
        else:
            assert len(holders) == 1, (test_file, holders)
    assert len(files) > 50
