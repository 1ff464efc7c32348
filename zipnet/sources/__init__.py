"""Where the digits come from. Each source turns its config into raw pools.

A source module defines

    SHARED: bool                    # True: one pool, both splits drawn from it disjointly
    def identity(cfg) -> dict       # what, beyond the common keys, decides the tensors (for the cache key)
    def load(cfg) -> Pools          # the raw pools

`zipnet.data` does the sampling, resizing, scaling and caching, the same for every source.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from zipnet.errors import ConfigError

# name -> module; imported only when asked for, so h5py etc. load only for the sources that need them
SOURCES = {
    "embedded": "zipnet.sources.embedded",
    "mnist": "zipnet.sources.mnist",
    "usps": "zipnet.sources.usps",
}


@dataclass(frozen=True)
class Pools:
    """Images are uint8 (N, 28, 28) grey levels 0-255 (0 = background), or float32 (N, 16, 16)
    already in [-1, 1] (-1 = background). Labels are integers 0..9. With a shared source the
    test pool is the train pool."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def get(name) -> ModuleType:
    if name not in SOURCES:
        raise ConfigError("data.source", f"{name!r} is not allowed; choose one of {', '.join(SOURCES)}")
    return importlib.import_module(SOURCES[name])
