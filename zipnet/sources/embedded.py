"""data=embedded: 10,000 MNIST training digits shipped in the package (zipnet/assets/README.md).

There is no fixed split, so both splits are drawn from this one pool, disjointly.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from zipnet.errors import DataError
from zipnet.sources import Pools

ASSET = Path(__file__).resolve().parents[1] / "assets" / "mnist10k.npz"
SHA256 = "0217e13bd0668deb198aa7d305edbf0331eb89f8a6e7dd226e03d1aa3a9bd4ef"
SIZE = 10_000
SHARED = True


def identity(cfg) -> dict:
    return {"asset_sha256": SHA256}


def load(cfg) -> Pools:
    try:
        blob = ASSET.read_bytes()
    except OSError as err:
        raise DataError(
            f"{ASSET}: cannot read the embedded digits ({err}); rebuild with `python scripts/build_embedded.py`"
        ) from err
    digest = hashlib.sha256(blob).hexdigest()
    if digest != SHA256:
        raise DataError(
            f"{ASSET}: sha256 {digest} != {SHA256}; the file is damaged, "
            "rebuild with `python scripts/build_embedded.py`"
        )
    with np.load(ASSET) as npz:
        images, labels = npz["images"], npz["labels"]
    assert images.shape == (SIZE, 28, 28) and images.dtype == np.uint8 and labels.shape == (SIZE,)
    return Pools(images, labels, images, labels)
