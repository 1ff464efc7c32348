"""The suite's own fixtures, run in a pytest of their own (pytester) with tests/conftest.py."""

from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")


def test_torch_threads_are_restored_after_each_test(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    for helper in ("servers.py", "hosts.py"):  # the plugins the conftest loads
        (pytester.path / helper).write_text(CONFTEST.with_name(helper).read_text())
    pytester.makepyfile(
        test_threads="""
        import pytest
        import torch

        BEFORE = torch.get_num_threads()

        @pytest.fixture(scope="module")
        def trained():
            torch.set_num_threads(BEFORE + 2)  # as a module fixture that trains with trainer.threads does

        def test_a_module_fixture_sets_threads(trained):
            assert torch.get_num_threads() == BEFORE + 2

        def test_a_test_sets_threads():
            assert torch.get_num_threads() == BEFORE
            torch.set_num_threads(BEFORE + 1)

        def test_the_next_test_starts_with_the_sessions_count():
            assert torch.get_num_threads() == BEFORE
    """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=3)
