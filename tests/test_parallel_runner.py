"""The suite runner of ``make test`` (tests/parallel.py): which arguments name tests, and the combined exit status."""

from __future__ import annotations

from tests.parallel import NO_TESTS_COLLECTED, combined_status, names_tests


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
