"""docs/usps_study.md's best configuration on the real USPS digits, against its documented figures."""

import re
import subprocess
import sys

import pytest
from conftest import ROOT, SHARED_USPS
from test_repro import N_TEST, N_TRAIN, PASSES, per_pass

from zipnet import paper

# docs/usps_study.md, "the best configurations, 5 seeds each": sgd_random, mean and std over seeds 0-4 at pass 23
DOCUMENTED = {
    "train/error": (0.18, 0.05),
    "train/loss": (2.33e-3, 0.30e-3),
    "test/error": (5.75, 0.19),
    "test/loss": (1.58e-2, 0.05e-2),
    paper.GAP: (0.17, 0.06),
}


def best_configuration() -> list[str]:
    """sgd_random's overrides, from the script that produced the documented figures."""
    script = (ROOT / "scripts" / "usps_study.sh").read_text()
    return re.search(r'"sgd_random\|([^"]+)"', script)[1].split()


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_USPS.is_file(), reason=f"the shared USPS copy is not at {SHARED_USPS}")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_usps_best_configuration_matches_its_documented_figures(tmp_path, seed):
    """Each seed's final pass lies within the documented mean +- 2 std of every figure (in a set
    of 5, no seed can be more than 1.79 sample std from the mean, so a faithful rerun passes).

    The documented figures come from `zipnet-train -m hydra/launcher=population seed=0,1,2,3,4`
    (torch ops), which reproduces them exactly (test error 5.48 5.73 5.68 5.98 5.88%). A single
    run takes the compiled kernel where there is one, whose rounding differs, so seeds 0 and 3
    end a few misses apart (seed 0: 5.68% test); both lie in the band. ~10 s per seed with the kernel.
    """
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "zipnet.cli.train",
            "data=usps",
            f"data.path={SHARED_USPS}",
            f"seed={seed}",
            "tracking.enabled=false",
            *best_configuration(),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = per_pass(proc.stdout)
    assert [r["pass"] for r in rows] == list(range(1, PASSES + 1))
    last = rows[-1]
    last[paper.GAP] = paper.gap(last, N_TRAIN, N_TEST)
    for key, (mean, std) in DOCUMENTED.items():
        assert mean - 2 * std <= last[key] <= mean + 2 * std, (
            f"seed {seed}: {key} {last[key]:.4g} outside {mean} +- 2 x {std}"
        )
