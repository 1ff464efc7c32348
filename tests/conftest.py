import os
from pathlib import Path

import pytest
import torch

# pytester: tests/test_conftest.py runs these fixtures in a pytest of its own;
# servers: the PostgreSQL, MLflow server and hosts fixtures (tests/servers.py)
pytest_plugins = ["pytester", "servers"]

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the project (CI has it); ZIPNET_SHARED_DATA points elsewhere, e.g. from a git worktree
SHARED_DATA = Path(os.environ.get("ZIPNET_SHARED_DATA") or ROOT.parent / "shared" / "data")
SHARED_USPS = SHARED_DATA / "usps.h5"


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Prepared-data caches go to a per-session temp dir, never the user's cache."""
    os.environ["ZIPNET_CACHE"] = str(tmp_path_factory.mktemp("zipnet-cache"))
    yield


@pytest.fixture(scope="session", autouse=True)
def _session_threads() -> int:
    """torch's thread count before any test or fixture ran (trainer.threads sets it process-wide)."""
    return torch.get_num_threads()


@pytest.fixture(autouse=True)
def _restore_threads(_session_threads):
    """Whatever a test, or a module fixture it used, set torch's thread count to, the next test
    starts with the session's own: no test's speed or result depends on which ran before it."""
    yield
    torch.set_num_threads(_session_threads)
