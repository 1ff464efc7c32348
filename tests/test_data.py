"""The data module on the embedded digits: determinism, splits, ranges, cache, errors."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from zipnet import data
from zipnet.data import cache_key, load_digits
from zipnet.errors import ConfigError
from zipnet.sources import embedded

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_COUNTS = np.array([1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978])


def config(tmp_path, **overrides):
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "data" / "embedded.yaml"))
    cfg["cache_dir"] = str(tmp_path / "cache")
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_digits(config(tmp_path_factory.mktemp("digits")))


def test_embedded_yaml_composes_with_interpolated_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ZIPNET_CACHE", str(tmp_path / "env-cache"))
    cfg = OmegaConf.load(ROOT / "conf" / "data" / "embedded.yaml")
    d = load_digits(cfg)
    assert len(list((tmp_path / "env-cache").glob("digits-embedded-*.npz"))) == 1
    assert len(d.train_y) == 7291 and len(d.test_y) == 2007


def test_shapes_dtypes_and_range(digits):
    assert digits.train_x.shape == (7291, 1, 16, 16) and digits.test_x.shape == (2007, 1, 16, 16)
    assert digits.train_x.dtype == torch.float32 and digits.train_y.dtype == torch.int64
    for x in (digits.train_x, digits.test_x):
        assert x.min() >= -1.0 and x.max() <= 1.0
        assert x.min() == -1.0 and x.max() > 0.9  # background at -1, ink near +1
    assert set(digits.train_y.unique().tolist()) == set(range(10))


def test_deterministic_in_process_and_across_hash_seeds(tmp_path, digits):
    again = load_digits(config(tmp_path))  # a fresh cache dir: built again, not read back
    assert again.fingerprint == digits.fingerprint
    code = f"from zipnet.data import load_digits;print(load_digits({config(tmp_path / 'sub')!r}).fingerprint)"
    for hash_seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == digits.fingerprint


def test_splits_are_disjoint(digits):
    train, test = data.sample(0, 7291, 2007, 10_000, 10_000, shared=True)
    assert len(set(train.tolist()) | set(test.tolist())) == 7291 + 2007
    train_rows = {row.tobytes() for row in digits.train_x.numpy()}
    assert not any(row.tobytes() in train_rows for row in digits.test_x.numpy())


def test_seed_changes_the_draw(tmp_path, digits):
    assert load_digits(config(tmp_path, seed=1)).fingerprint != digits.fingerprint


def test_class_balance_follows_the_source(digits):
    share = EMBEDDED_COUNTS / EMBEDDED_COUNTS.sum()
    for y in (digits.train_y, digits.test_y):
        counts = np.bincount(y.numpy(), minlength=10)
        assert np.abs(counts / counts.sum() - share).max() < 0.02


def test_embedded_asset_matches_its_readme():
    pools = embedded.load({})
    assert np.bincount(pools.train_labels, minlength=10).tolist() == EMBEDDED_COUNTS.tolist()
    assert embedded.SHA256 in (ROOT / "zipnet" / "assets" / "README.md").read_text()


def test_antialias_differs_from_bilinear(tmp_path, digits):
    smooth = load_digits(config(tmp_path, resize="antialias"))
    assert smooth.fingerprint != digits.fingerprint
    assert torch.equal(smooth.train_y, digits.train_y)  # same draw, different resize
    assert not torch.allclose(smooth.train_x, digits.train_x)
    assert smooth.train_x.min() >= -1.0 and smooth.train_x.max() <= 1.0


def test_targets(digits):
    t = digits.targets("test", -0.8, 0.6)
    assert t.shape == (2007, 10) and t.dtype == torch.float32
    assert torch.equal(t.argmax(1), digits.test_y)
    assert t.unique().tolist() == pytest.approx([-0.8, 0.6])
    assert (t == t.max()).sum() == 2007
    with pytest.raises(ValueError, match="train, test"):
        digits.targets("valid", -1, 1)


def test_cache_key_ignores_cache_dir_and_targets(tmp_path):
    base = cache_key(config(tmp_path))
    assert cache_key(config(tmp_path / "other", target_negative=-0.5, target_positive=0.5)) == base
    for change in ({"seed": 1}, {"n_train": 100}, {"n_test": 100}, {"resize": "antialias"}, {"deslant": True}):
        assert cache_key(config(tmp_path, **change)) != base


@pytest.mark.parametrize("damage", ["truncate", "garble", "empty"])
def test_corrupt_cache_is_reported_and_rebuilt(tmp_path, digits, damage):
    cfg = config(tmp_path)
    load_digits(cfg)
    (path,) = (tmp_path / "cache").glob("digits-embedded-*.npz")
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "garble":  # flip bytes inside the train_x payload: the zip still opens
        mid = len(blob) // 3
        path.write_bytes(blob[:mid] + bytes(b ^ 0xFF for b in blob[mid : mid + 64]) + blob[mid + 64 :])
    else:
        path.write_bytes(b"")
    with pytest.warns(UserWarning, match=str(path.name)):
        again = load_digits(cfg)
    assert again.fingerprint == digits.fingerprint
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt: the next load reads it back without complaint
        assert load_digits(cfg).fingerprint == digits.fingerprint


def test_cache_is_read_back(tmp_path, digits, monkeypatch):
    cfg = config(tmp_path)
    load_digits(cfg)
    monkeypatch.setattr(embedded, "load", lambda cfg: pytest.fail("the cache was not used"))
    assert load_digits(cfg).fingerprint == digits.fingerprint


def test_unwritable_cache_dir_warns_and_continues(tmp_path, digits):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache dir should be")
    with pytest.warns(UserWarning, match="continuing without it"):
        d = load_digits(config(tmp_path, cache_dir=str(blocker / "cache")))
    assert d.fingerprint == digits.fingerprint


def test_null_cache_dir_disables_the_cache(tmp_path, digits):
    assert load_digits(config(tmp_path, cache_dir=None)).fingerprint == digits.fingerprint
    assert not (tmp_path / "cache").exists()


def test_too_many_digits_names_the_key(tmp_path):
    with pytest.raises(
        ConfigError, match=r"data\.n_train: n_train \+ n_test = 10001 > 10000, the size of the embedded set"
    ) as err:
        load_digits(config(tmp_path, n_train=7994, n_test=2007))
    assert err.value.key == "data.n_train"


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("source", "zipcodes", "embedded"),
        ("resize", "bicubic", "bilinear, antialias"),
        ("n_train", 0, "positive integer"),
        ("n_test", None, "positive integer"),
        ("n_train", 12.5, "positive integer"),
        ("seed", -1, "integer >= 0"),
        ("target_negative", 1.0, "must be below data.target_positive"),
        ("deslant", "yes", "'yes' is not allowed; choose one of true, false"),
        ("deslant", 1, "1 is not allowed; choose one of true, false"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(tmp_path, key, value, allowed):
    with pytest.raises(ConfigError, match=allowed) as err:
        load_digits(config(tmp_path, **{key: value}))
    assert err.value.key == f"data.{key}"


OVERLAPPING_WRITER = """
import json, sys, time
from pathlib import Path
from zipnet import data

mine, other, cfg = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
build = data._build

def build_after_both_missed(cfg, options):
    mine.touch()  # this process found no cache
    deadline = time.monotonic() + 120
    while not other.exists():  # until the other process found none either
        assert time.monotonic() < deadline, "the other process never missed the cache"
        time.sleep(0.01)
    return build(cfg, options)

data._build = build_after_both_missed
print(data.load_digits(cfg).fingerprint)
"""


def test_two_processes_preparing_one_cache_at_once_leave_one_good_file(tmp_path, digits):
    """Why the cache needs no lock: each writer renames a complete temporary file into place, so
    two workers that both miss the cache and build it (made to overlap: each waits, after its
    miss, until the other has missed too) leave one valid file and nothing else, which a third
    load reads back without a warning. The cost of the race is one duplicate build (~0.2 s)."""
    cfg = config(tmp_path)
    marks = [tmp_path / "a.missed", tmp_path / "b.missed"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OVERLAPPING_WRITER, str(me), str(other), json.dumps(cfg)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me, other in (marks, marks[::-1])
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [out.strip() for out, _ in outs] == [digits.fingerprint] * 2 and all(m.exists() for m in marks)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"digits-embedded-{cache_key(cfg)[:16]}.npz"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_digits(cfg).fingerprint == digits.fingerprint


def test_deslant_shears_train_and_test_upright_and_keeps_the_draw(tmp_path, digits):
    from zipnet import ink

    upright = load_digits(config(tmp_path, deslant=True))
    assert torch.equal(upright.train_y, digits.train_y) and torch.equal(upright.test_y, digits.test_y)
    for before, after in ((digits.train_x, upright.train_x), (digits.test_x, upright.test_x)):
        assert after.shape == before.shape and after.dtype == torch.float32
        assert after.min() >= -1.0 and after.max() <= 1.0
        leaning = np.median(np.abs(ink.slant(before.numpy()[:, 0])))
        left = np.abs(ink.slant(after.numpy()[:, 0]))
        assert leaning > 0.15 and np.median(left) < 0.02  # the MNIST sample leans; deslanted, it stands
        expected = ink.deslant(before.numpy()[:, 0])  # digit by digit, as ink.deslant shears one
        assert np.array_equal(after.numpy()[:, 0], expected)
    cfg = config(tmp_path)
    cfg.pop("deslant")  # a config from before the key: today's digits, under today's cache key
    assert cache_key(cfg) == cache_key(config(tmp_path, deslant=False))
    assert load_digits(cfg).fingerprint == digits.fingerprint
