"""scripts/usps_questions.py: every level it trains is a valid config, and its store keeps what
the tables need (a tiny real training on usps.h5, skipped when the file is absent)."""

import importlib.util

import pytest
from conftest import ROOT, SHARED_USPS

from zipnet import config

spec = importlib.util.spec_from_file_location("usps_questions", ROOT / "scripts" / "usps_questions.py")
questions = importlib.util.module_from_spec(spec)
spec.loader.exec_module(questions)


def test_a_level_replaces_the_base_value_of_its_key():
    level = questions.merged([f"optim.lr={questions.LR / 2}"])
    assert [o for o in level if o.startswith("optim.lr=")] == [f"optim.lr={questions.LR / 2}"]
    assert len(level) == len(questions.BASE)


def test_every_level_and_gap_configuration_passes_the_checks():
    wanted = [questions.merged(o) for levels in questions.QUESTIONS.values() for _, o in levels]
    wanted += list(questions.GAP_CONFIGS.values())
    with config.Composer() as composer:
        for overrides in wanted:
            member, _ = config.check(composer.compose(["data=usps", *overrides]))
            assert member.init.seed == 0
    # the sdlm_random gap configuration is the "SDLM as tuned" level: its seeds train once
    tuned = questions.merged(questions.SDLM + questions.PM08)
    assert sorted(questions.GAP_CONFIGS["sdlm_random"]) == tuned


@pytest.mark.skipif(not SHARED_USPS.is_file(), reason="needs ../shared/data/usps.h5")
def test_the_store_keeps_per_digit_results_and_a_rerun_trains_nothing(tmp_path):
    data = ["data=usps", f"data.path={SHARED_USPS}", "data.cache_dir=null"]
    store = questions.Store(tmp_path / "members_usps.jsonl")
    levels = [questions.merged([]), questions.merged(["model.init=sqrt"])]
    assert questions.train(store, levels, range(2), data, passes=1, sample=False) > 0
    rows = store.get(levels[1], 1, range(2))
    assert [r["seed"] for r in rows] == [0, 1] and all(r["status"] == "finished" for r in rows)
    for r in rows:
        assert len(r["correct"]) == questions.N_TEST
        assert r["correct"].count("0") == r["test_misses"] == r["min_test_misses"]
        assert 0 <= r["reject"] <= 100
    reread = questions.Store(tmp_path / "members_usps.jsonl")  # from disk, as a rerun sees it
    assert questions.train(reread, levels, range(2), data, passes=1, sample=False) == 0.0
    assert reread.get(levels[1], 1, range(2)) == rows
