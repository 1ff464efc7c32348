"""data=mnist and data=usps end to end: files served from 127.0.0.1 or given by path,
sampled, prepared and cached like the embedded digits. Plus the real usps.h5 when present."""

from pathlib import Path

import digit_files as make
import numpy as np
import pytest
import torch
from conftest import SHARED_USPS
from omegaconf import OmegaConf
from test_download import Server

from zipnet.data import load_digits
from zipnet.download import DownloadError
from zipnet.errors import ConfigError, DataError
from zipnet.sources import mnist, usps

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def config(name, tmp_path, **overrides):
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "data" / f"{name}.yaml"))
    cfg.update({"root": str(tmp_path / "data"), "cache_dir": str(tmp_path / "cache"), **overrides})
    return cfg


# --- mnist ------------------------------------------------------------------------------


@pytest.fixture
def tiny_mnist(server, monkeypatch):
    """A 300 / 100 digit MNIST on the local server, behind a mirror that answers 404."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (300, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(300) % 10,
        "test_images": rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
        "test_labels": np.arange(100) % 10,
    }
    files = {}
    for key, (name, _, _) in mnist.FILES.items():
        blob = make.gz(make.idx(arrays[key]))
        server.add(f"/good/{name}", blob)
        files[key] = (name, make.md5(blob), arrays[key].shape)
    monkeypatch.setattr(mnist, "FILES", files)
    return [server.base + "/gone/", server.base + "/good"], arrays


def test_mnist_downloads_verifies_and_samples(tmp_path, server, tiny_mnist):
    mirrors, arrays = tiny_mnist
    d = load_digits(config("mnist", tmp_path, mirrors=mirrors, n_train=50, n_test=20))
    assert d.train_x.shape == (50, 1, 16, 16) and d.test_x.shape == (20, 1, 16, 16)
    assert d.train_x.min() >= -1 and d.train_x.max() <= 1
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(f[0] for f in mnist.FILES.values())
    assert sum(h.startswith("/gone/") for h in server.hits) == 4  # each file tried the dead mirror first
    hits = len(server.hits)
    again = load_digits(config("mnist", tmp_path, mirrors=mirrors, n_train=50, n_test=20, cache_dir=None))
    assert again.fingerprint == d.fingerprint and len(server.hits) == hits  # verified files: no new download
    # the test draw has its own stream: it does not move when n_train does
    more = load_digits(config("mnist", tmp_path, mirrors=mirrors, n_train=80, n_test=20))
    assert torch.equal(more.test_x, d.test_x)
    # null: the whole split, in file order
    full = load_digits(config("mnist", tmp_path, mirrors=mirrors, n_train=None, n_test=None))
    assert torch.equal(full.train_y, torch.as_tensor(arrays["train_labels"], dtype=torch.int64))


def test_mnist_too_many_names_the_key(tmp_path, tiny_mnist):
    with pytest.raises(ConfigError, match=r"data\.n_train: n_train = 301 > 300, the size of the mnist train set"):
        load_digits(config("mnist", tmp_path, mirrors=tiny_mnist[0], n_train=301, n_test=20))


def test_mnist_offline_error_lists_urls_and_the_ways_out(tmp_path, server):
    with pytest.raises(DownloadError) as err:
        load_digits(config("mnist", tmp_path, mirrors=[server.base + "/gone/"]))
    text = str(err.value)
    assert f"{server.base}/gone/train-images-idx3-ubyte.gz: HTTP 404" in text
    assert str(tmp_path / "data") in text and "data.root" in text and "data=embedded" in text


# --- usps ---------------------------------------------------------------------------------


@pytest.fixture
def tiny_usps(tmp_path):
    """The same 30 / 20 digits as LIBSVM (bz2), ESL (gz) and HDF5 files."""
    train, test = make.digits(30, seed=1), make.digits(20, seed=2)
    (tmp_path / "libsvm").mkdir()
    (tmp_path / "libsvm" / "usps.bz2").write_bytes(make.bz(make.libsvm(*train)))
    (tmp_path / "libsvm" / "usps.t.bz2").write_bytes(make.bz(make.libsvm(*test)))
    (tmp_path / "esl").mkdir()
    (tmp_path / "esl" / "zip.train.gz").write_bytes(make.gz(make.esl(*train)))
    (tmp_path / "esl" / "zip.test.gz").write_bytes(make.gz(make.esl(*test)))
    make.h5(tmp_path / "usps.h5", {"train": train, "test": test})
    return train, test


def test_usps_reads_every_format_by_path(tmp_path, tiny_usps):
    train, test = tiny_usps
    paths = [
        tmp_path / "libsvm",
        tmp_path / "libsvm" / "usps.bz2",
        tmp_path / "esl",
        tmp_path / "esl" / "zip.train.gz",
        tmp_path / "usps.h5",
    ]
    loaded = [load_digits(config("usps", tmp_path, path=str(p))) for p in paths]
    for d in loaded:
        assert d.train_x.shape == (30, 1, 16, 16) and d.test_x.shape == (20, 1, 16, 16)
        np.testing.assert_array_equal(d.train_y.numpy(), train[1])
        np.testing.assert_allclose(d.test_x.numpy().reshape(20, 256), test[0], atol=1e-6)
    assert len({d.fingerprint for d in loaded[:4]}) == 1  # the text formats hold the very same numbers


def test_usps_subsamples_with_the_seed(tmp_path, tiny_usps):
    full = load_digits(config("usps", tmp_path, path=str(tmp_path / "usps.h5")))
    part = load_digits(config("usps", tmp_path, path=str(tmp_path / "usps.h5"), n_train=10, n_test=5))
    assert part.train_x.shape == (10, 1, 16, 16) and part.test_x.shape == (5, 1, 16, 16)
    rows = {r.tobytes() for r in full.train_x.numpy()}
    assert all(r.tobytes() in rows for r in part.train_x.numpy())
    assert (
        load_digits(config("usps", tmp_path, path=str(tmp_path / "usps.h5"), n_train=10, n_test=5)).fingerprint
        == part.fingerprint
    )


def test_usps_path_errors_say_what_is_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match=r"empty: holds none of usps\.h5"):
        load_digits(config("usps", tmp_path, path=str(tmp_path / "empty")))
    (tmp_path / "lonely").mkdir()
    (tmp_path / "lonely" / "zip.train").write_bytes(make.esl(*make.digits(3)))
    with pytest.raises(Exception, match=r"zip\.train: a LIBSVM or ESL file holds one split"):
        load_digits(config("usps", tmp_path, path=str(tmp_path / "lonely" / "zip.train")))


def test_usps_download_falls_back_from_libsvm_to_esl(tmp_path, server, tiny_usps, monkeypatch):
    train, test = tiny_usps
    libsvm = (
        usps.Remote("usps.bz2", (server.add("/libsvm/usps.bz2", b"garbage"),), md5=make.md5(b"the real one")),
        usps.Remote("usps.t.bz2", (server.base + "/libsvm/usps.t.bz2",), md5="0" * 32),
    )
    esl = tuple(
        usps.Remote(
            name, (server.base + "/gone/" + name, server.add("/esl/" + name, (tmp_path / "esl" / name).read_bytes()))
        )
        for name in ("zip.train.gz", "zip.test.gz")
    )
    monkeypatch.setattr(usps, "DOWNLOADS", (libsvm, esl))
    monkeypatch.setattr(
        usps,
        "COUNTS",
        {"train": np.bincount(train[1], minlength=10).tolist(), "test": np.bincount(test[1], minlength=10).tolist()},
    )
    d = load_digits(config("usps", tmp_path))
    np.testing.assert_array_equal(d.train_y.numpy(), train[1])
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["zip.test.gz", "zip.train.gz"]


def test_usps_esl_download_with_wrong_counts_is_refused(tmp_path, server, tiny_usps, monkeypatch):
    esl = tuple(
        usps.Remote(name, (server.add("/esl/" + name, (tmp_path / "esl" / name).read_bytes()),))
        for name in ("zip.train.gz", "zip.test.gz")
    )
    monkeypatch.setattr(usps, "DOWNLOADS", (esl,))
    with pytest.raises(DownloadError) as err:
        load_digits(config("usps", tmp_path))
    assert "content check failed" in str(err.value) and "expected USPS train [1194, 1005" in str(err.value)
    assert "data.path" in str(err.value) and "data=embedded" in str(err.value)
    assert not (tmp_path / "data" / "zip.train.gz").exists()


@pytest.mark.skipif(not SHARED_USPS.is_file(), reason=f"the shared USPS copy is not at {SHARED_USPS} (CI has it)")
def test_real_usps_h5_through_the_usps_source(tmp_path):
    d = load_digits(config("usps", tmp_path, path=str(SHARED_USPS)))
    assert len(d.train_y) == 7291 and len(d.test_y) == 2007
    assert np.bincount(d.train_y.numpy(), minlength=10).tolist() == usps.COUNTS["train"]
    assert np.bincount(d.test_y.numpy(), minlength=10).tolist() == usps.COUNTS["test"]
    for x in (d.train_x, d.test_x):
        assert x.shape[1:] == (1, 16, 16) and x.min() == -1.0 and x.max() == 1.0
    assert d.train_y[0] == 6  # the shared copy's README: the first training digit is a 6


@pytest.mark.parametrize(
    "content", [b"", b"\x00\x01garbage\xff" * 50, b"hello world\n"], ids=["empty", "binary", "text"]
)
def test_unreadable_usps_file_says_which_formats_it_is_not(tmp_path, content):
    """A user's empty or garbage usps.h5 is not a LIBSVM file missing its test half."""
    bad = tmp_path / "usps.h5"
    bad.write_bytes(content)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "usps.h5").write_bytes(content)
    for path in (bad, tmp_path / "folder"):
        with pytest.raises(DataError) as err:
            load_digits(config("usps", tmp_path, path=str(path)))
        text = str(err.value)
        assert text.startswith(f"{bad if path == bad else path / 'usps.h5'}: not a readable HDF5, LIBSVM or ESL file")
        assert "missing" not in text and "\n" not in text
