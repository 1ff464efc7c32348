"""data=usps: the US Postal Service digits the 1989 paper trained on (7,291 / 2,007, 16x16).

Either a local copy (data.path: usps.h5, LIBSVM usps / usps.t, ESL zip.train / zip.test,
compressed or not, or a folder holding them) or a download into data.root: LIBSVM's
bz2 files (MD5-checked) first, then ESL's gz files (no published checksum, so they must
parse and show the known class counts). The paper: "7291 examples are used for training
the network and 2007 are used to test"; null sizes keep exactly that split, in file order.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from zipnet.download import DownloadError, Remote, fetch
from zipnet.errors import ConfigError, DataError
from zipnet.sources import Pools
from zipnet.sources.formats import read_h5, read_usps_split, usps_format

SHARED = False
COUNTS = {  # class counts 0..9 (ESL's zip.info.txt)
    "train": [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644],
    "test": [359, 264, 198, 166, 200, 160, 170, 147, 166, 177],
}
LIBSVM = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/"
ESL = ("https://hastie.su.domains/ElemStatLearn/datasets/", "https://web.stanford.edu/~hastie/ElemStatLearn/datasets/")
# (train, test) pairs, tried in order
DOWNLOADS = (
    (
        Remote("usps.bz2", (LIBSVM + "usps.bz2",), md5="ec16c51db3855ca6c91edd34d0e9b197"),
        Remote("usps.t.bz2", (LIBSVM + "usps.t.bz2",), md5="8ea070ee2aca1ac39742fdd1ef5ed118"),
    ),
    (
        Remote("zip.train.gz", tuple(base + "zip.train.gz" for base in ESL)),
        Remote("zip.test.gz", tuple(base + "zip.test.gz" for base in ESL)),
    ),
)
# names a folder given as data.path may hold, (train, test), first match wins
LOCAL_PAIRS = (
    ("usps.bz2", "usps.t.bz2"),
    ("usps", "usps.t"),
    ("zip.train.gz", "zip.test.gz"),
    ("zip.train", "zip.test"),
)


def _path(cfg) -> Path | None:
    path = cfg.get("path")
    return None if path in (None, "") else Path(str(path)).expanduser()


def _test_sibling(train: Path) -> Path | None:
    """The test file beside a train file: usps(.bz2) -> usps.t(.bz2), zip.train(.gz) -> zip.test(.gz)."""
    name = train.name
    if "train" in name:
        return train.with_name(name.replace("train", "test"))
    stem, dot, ext = name.partition(".")
    return train.with_name(f"{stem}.t{dot}{ext}")


def local_files(path: Path) -> tuple[Path, ...]:
    """(usps.h5,) or (train, test) for data.path."""
    if path.is_dir():
        if (path / "usps.h5").is_file():
            return local_files(path / "usps.h5")
        for train, test in LOCAL_PAIRS:
            if (path / train).is_file() and (path / test).is_file():
                return path / train, path / test
        raise DataError(
            f"{path}: holds none of usps.h5, "
            + ", ".join(f"{a} + {b}" for a, b in LOCAL_PAIRS)
            + "; point data.path at the file or folder"
        )
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder (data.path)")
    if usps_format(path) == "hdf5":
        return (path,)
    test = _test_sibling(path)
    if test is None or not test.is_file():
        raise DataError(
            f"{path}: a LIBSVM or ESL file holds one split, and its test file {test} is missing; "
            f"put both in one folder and point data.path at it, or use usps.h5"
        )
    return path, test


def _read(files: tuple[Path, ...]) -> Pools:
    if len(files) == 1:
        splits = read_h5(files[0])
    else:
        splits = {}
        for split, file in zip(("train", "test"), files, strict=True):
            _, images, labels = read_usps_split(file)
            splits[split] = (images, labels)
    return Pools(*splits["train"], *splits["test"])


def _check_counts(split: str):
    def check(path: Path) -> None:
        _, _, labels = read_usps_split(path)
        counts = np.bincount(labels, minlength=10).tolist()
        if counts != COUNTS[split]:
            raise DataError(f"{path}: class counts {counts}, expected USPS {split} {COUNTS[split]}")

    return check


def _download(cfg) -> tuple[Path, Path]:
    root = cfg.get("root")
    if not root:
        raise ConfigError("data.root", f"{root!r} is not allowed; give the folder for the USPS files")
    root = Path(str(root)).expanduser()
    tried = []
    for train, test in DOWNLOADS:
        try:
            return tuple(
                fetch(remote, root, check=None if remote.md5 else _check_counts(split))
                for remote, split in ((train, "train"), (test, "test"))
            )
        except DownloadError as err:
            tried += err.tried
    raise DownloadError(
        "\n".join(
            ["could not download the USPS digits; tried:"]
            + [f"  {url}: {why}" for url, why in tried]
            + [
                f"Put usps.h5, usps.bz2 + usps.t.bz2 or zip.train.gz + zip.test.gz in {root} by hand, or point "
                f"data.path at a copy, or use data=embedded, which works offline."
            ]
        ),
        tried,
    )


def files(cfg) -> tuple[Path, ...]:
    path = _path(cfg)
    if path is not None:
        return local_files(path)
    root = cfg.get("root")
    if root and Path(str(root)).expanduser().is_dir():  # a copy put there by hand counts too
        try:
            return local_files(Path(str(root)).expanduser())
        except DataError:
            pass
    return _download(cfg)


def identity(cfg) -> dict:
    """The sha256 of the files read: equal bytes, equal digits, wherever they came from."""
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files(cfg)}


def load(cfg) -> Pools:
    return _read(files(cfg))
