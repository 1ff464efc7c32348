"""data=mnist: the full MNIST set (60,000 train / 10,000 test, 28x28), downloaded once.

The seed's protocol: 7,291 of the training images and 2,007 of the test images, resized
28->16. The four IDX files live in data.root; missing ones are fetched from data.mirrors
in order and kept only when their MD5 matches.
"""

from __future__ import annotations

from pathlib import Path

from zipnet.download import Remote, fetch
from zipnet.errors import ConfigError, DataError
from zipnet.sources import Pools
from zipnet.sources.formats import read_idx

SHARED = False
# The MD5s published with the standard mirrors (the same four in torchvision and elsewhere).
FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", (60000, 28, 28)),
    "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", (60000,)),
    "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", (10000, 28, 28)),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", (10000,)),
}


def identity(cfg) -> dict:
    return {name: md5 for name, md5, _ in FILES.values()}


def _root(cfg) -> Path:
    root = cfg.get("root")
    if not root:
        raise ConfigError("data.root", f"{root!r} is not allowed; give the folder for the MNIST files")
    return Path(str(root)).expanduser()


def _mirrors(cfg) -> tuple[str, ...]:
    mirrors = cfg.get("mirrors")
    if not mirrors or isinstance(mirrors, str) or not all(isinstance(m, str) and m for m in mirrors):
        raise ConfigError("data.mirrors", f"{mirrors!r} is not allowed; give a list of base URLs")
    return tuple(m if m.endswith("/") else m + "/" for m in mirrors)


def load(cfg) -> Pools:
    root, mirrors = _root(cfg), _mirrors(cfg)
    hint = (
        f"Put the four files ({', '.join(f[0] for f in FILES.values())}) in {root} by hand "
        f"(or point data.root at a folder holding them), or use data=embedded, which works offline."
    )
    arrays = {}
    for key, (name, md5, shape) in FILES.items():
        path = fetch(Remote(name, tuple(m + name for m in mirrors), md5=md5), root, hint=hint)
        arrays[key] = read_idx(path)
        if arrays[key].shape != shape:
            raise DataError(f"{path}: shape {arrays[key].shape}, expected {shape}")
    return Pools(arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"])
