"""The storage's statements per trial, counted in PostgreSQL's own statement log (`log_statement=all`,
BEGIN and COMMIT included, heartbeats apart) by benchmarks/bench_requests.py: a 10-trial study of
6 passes, tracking off, stays within the target of 25 (issue 18)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from servers import postgres_missing

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(postgres_missing() is not None, reason=str(postgres_missing()))
def test_a_trial_makes_at_most_25_storage_statements_in_postgresql():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_requests.py"), "--trials", "10", "--outputs"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(r"PostgreSQL \(optuna\): ([\d.]+) statements per trial", done.stdout)
    assert found, done.stdout[-3000:]
    assert float(found.group(1)) <= 25, done.stdout
