import os
from pathlib import Path

import pytest

pytest_plugins = ["servers"]  # PostgreSQL, MLflow server and hosts fixtures (tests/servers.py)

ROOT = Path(__file__).resolve().parents[1]
SHARED_USPS = ROOT.parent / "shared" / "data" / "usps.h5"


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Prepared-data caches go to a per-session temp dir, never the user's cache."""
    os.environ["ZIPNET_CACHE"] = str(tmp_path_factory.mktemp("zipnet-cache"))
    yield
