"""The digits: sample, resize, scale and cache, the same for every source.

The paper: "9298 segmented numerals ... 7291 examples are used for training the network
and 2007 are used to test the generalization performance". Each digit is scaled to 16x16
and "the gray levels of each pixel [are] scaled to [-1, 1]".

Where the digits come from is a source (`zipnet.sources`); this module draws the splits
with one seeded `numpy.random.Generator` (no set or dict order, no hash seed: the seed
repo's draw differed between machines), resizes 28x28 sources to 16x16 as the config
says, deslants every digit where `data.deslant` asks (`zipnet.ink.deslant`; the paper is
silent on it), and keeps the prepared tensors in an on-disk cache keyed by the config.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from zipnet import ink, sources
from zipnet.errors import ConfigError, DataError
from zipnet.metrics import SPLITS

RESIZES = ("bilinear", "antialias")  # bilinear: the seed's choice (no antialias)
ARRAYS = ("train_x", "train_y", "test_x", "test_y")  # the fingerprint's order
PREP_VERSION = 1  # bump when the preparation below changes, so old caches are not reused
_ABSENT = object()


@dataclass(frozen=True, eq=False)
class Digits:
    train_x: torch.Tensor = field(repr=False)  # float32 (N_train, 1, 16, 16) in [-1, 1]
    train_y: torch.Tensor = field(repr=False)  # int64 (N_train,) labels 0..9
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    fingerprint: str  # sha256 of the four tensors (ARRAYS order): equal fingerprints, equal data

    def targets(self, split: str, negative: float, positive: float) -> torch.Tensor:
        """(N, 10) float32: `positive` at the label, `negative` elsewhere. The paper keeps
        targets "within the quasilinear range" of the squashing function; it gives no values."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not allowed; choose one of {', '.join(SPLITS)}")
        labels = self.train_y if split == "train" else self.test_y
        out = torch.full((len(labels), 10), float(negative), dtype=torch.float32)
        out[torch.arange(len(labels)), labels] = float(positive)
        return out


# --- config ------------------------------------------------------------------------------


def _get(cfg, key: str, default=_ABSENT):
    value = cfg.get(key, _ABSENT)  # a dict or a DictConfig (interpolations resolve here)
    if value is _ABSENT:
        if default is _ABSENT:
            raise ConfigError(f"data.{key}", "is missing from the config")
        return default
    return value


def _count(cfg, key: str, allow_all: bool) -> int | None:
    value = _get(cfg, key)
    if value is None and allow_all:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "a positive integer" + (", or null for the whole split" if allow_all else "")
        raise ConfigError(f"data.{key}", f"{value!r} is not allowed; give {allowed}")
    return value


def _options(cfg) -> dict:
    """The checked keys that decide the tensors (the cache key's input), less the source's own."""
    module = sources.get(_get(cfg, "source"))
    shared = module.SHARED
    seed = _get(cfg, "seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError("data.seed", f"{seed!r} is not allowed; give an integer >= 0")
    resize = _get(cfg, "resize")
    if resize not in RESIZES:
        raise ConfigError("data.resize", f"{resize!r} is not allowed; choose one of {', '.join(RESIZES)}")
    deslant = _get(cfg, "deslant", False)  # absent (a config from before the key): false, as then
    if not isinstance(deslant, bool):
        raise ConfigError("data.deslant", f"{deslant!r} is not allowed; choose one of true, false")
    options = {
        "source": _get(cfg, "source"),
        "n_train": _count(cfg, "n_train", allow_all=not shared),
        "n_test": _count(cfg, "n_test", allow_all=not shared),
        "seed": seed,
        "resize": resize,
    }
    if deslant:  # only when on: the caches of every deslant=false config keep their keys
        options["deslant"] = True
    return options


def _check_targets(cfg) -> None:
    values = {}
    for key, default in (("target_negative", -1.0), ("target_positive", 1.0)):
        value = _get(cfg, key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"data.{key}", f"{value!r} is not allowed; give a finite number")
        values[key] = value
    if not values["target_negative"] < values["target_positive"]:
        raise ConfigError(
            "data.target_negative",
            f"{values['target_negative']} must be below data.target_positive ({values['target_positive']})",
        )


def cache_key(cfg) -> str:
    """sha256 of what decides the prepared tensors: source, sizes, seed, resize, deslant and the
    source's own identity (e.g. its files' checksums). Not cache_dir, not the targets."""
    options = _options(cfg)
    identity = sources.get(options["source"]).identity(cfg)
    blob = json.dumps({"prep_version": PREP_VERSION, **options, "source_identity": identity}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# --- sampling and preparation -----------------------------------------------------------


def sample(
    seed: int, n_train: int | None, n_test: int | None, train_size: int, test_size: int, shared: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the train and test pools, in presentation order.

    Shared pool: one permutation of it; the first n_train are train, the next n_test test,
    so the splits are disjoint. Separate pools: an independent stream per split (the test
    draw does not move when n_train changes); null keeps the whole split in its own order.
    """
    if shared:
        order = np.random.default_rng(seed).permutation(train_size)
        return order[:n_train], order[n_train : n_train + n_test]
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    train = np.arange(train_size) if n_train is None else train_rng.permutation(train_size)[:n_train]
    test = np.arange(test_size) if n_test is None else test_rng.permutation(test_size)[:n_test]
    return train, test


def _check_sizes(source: str, n_train, n_test, train_size: int, test_size: int, shared: bool) -> None:
    if shared:
        if n_train + n_test > train_size:
            raise ConfigError(
                "data.n_train", f"n_train + n_test = {n_train + n_test} > {train_size}, the size of the {source} set"
            )
        return
    for key, n, size in (("n_train", n_train, train_size), ("n_test", n_test, test_size)):
        if n is not None and n > size:
            raise ConfigError(
                f"data.{key}",
                f"{key} = {n} > {size}, the size of the {source} {key[2:]} set; lower it or use null for all of it",
            )


def prepare(images: np.ndarray, resize: str) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 16, 16) in [-1, 1]; float 16x16 sources pass as is.
    Resize 28->16 first (on [0, 1]), then map to [-1, 1] as the paper does ("scaled to [-1, 1]")."""
    if images.dtype == np.uint8:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0)[:, None]
        x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=resize == "antialias")
        return x.mul_(2.0).sub_(1.0).contiguous()
    if images.shape[1:] != (16, 16):
        raise DataError(f"float images must be 16x16 in [-1, 1]; got shape {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None].clone()
    return x.add_(0.0)  # -0.0 -> +0.0: equal digits, equal bytes, whichever text wrote them


def fingerprint(arrays: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _check_pools(source: str, pools: sources.Pools) -> None:
    for split in SPLITS:
        images, labels = getattr(pools, f"{split}_images"), getattr(pools, f"{split}_labels")
        if len(images) != len(labels):
            raise DataError(f"{source} {split}: {len(images)} images but {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"{source} {split}: labels outside 0..9 ({labels.min()}..{labels.max()})")


def _build(cfg, options: dict) -> dict[str, np.ndarray]:
    module = sources.get(options["source"])
    pools = module.load(cfg)
    _check_pools(options["source"], pools)
    train_size, test_size = len(pools.train_labels), len(pools.test_labels)
    _check_sizes(options["source"], options["n_train"], options["n_test"], train_size, test_size, module.SHARED)
    train, test = sample(options["seed"], options["n_train"], options["n_test"], train_size, test_size, module.SHARED)
    arrays = {
        "train_x": prepare(pools.train_images[train], options["resize"]).numpy(),
        "train_y": pools.train_labels[train].astype(np.int64),
        "test_x": prepare(pools.test_images[test], options["resize"]).numpy(),
        "test_y": pools.test_labels[test].astype(np.int64),
    }
    if options.get("deslant"):  # after the resize and the scaling, the same for train and test
        for name in ("train_x", "test_x"):
            arrays[name] = ink.deslant(arrays[name][:, 0])[:, None]
    return arrays


# --- cache ---------------------------------------------------------------------------------


def _cache_path(cfg, options: dict, key: str) -> Path | None:
    cache_dir = _get(cfg, "cache_dir", os.environ.get("ZIPNET_CACHE") or str(Path.home() / ".cache" / "zipnet"))
    if cache_dir in (None, ""):
        return None  # data.cache_dir=null: no cache
    return Path(cache_dir).expanduser() / f"digits-{options['source']}-{key[:16]}.npz"


def _read_cache(path: Path, options: dict) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when absent. Anything unreadable or inconsistent is
    reported and ignored, never used."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in ARRAYS}
            stored = str(npz["checksum"])
        for split in SPLITS:
            x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
            n = options[f"n_{split}"]
            if (
                x.dtype != np.float32
                or x.ndim != 4
                or x.shape[1:] != (1, 16, 16)
                or y.dtype != np.int64
                or y.shape != (len(x),)
                or (n is not None and len(x) != n)
            ):
                raise ValueError(f"{split} arrays have shapes {x.shape} {x.dtype} / {y.shape} {y.dtype}")
        actual = fingerprint(arrays)
        if actual != stored:
            raise ValueError(f"checksum {actual[:16]}... != stored {stored[:16]}...")
        return arrays
    except Exception as err:  # noqa: BLE001 -- any failure means: do not trust the file
        warnings.warn(f"{path}: corrupt data cache ({type(err).__name__}: {err}); rebuilding it", stacklevel=3)
        return None


def _write_cache(path: Path, arrays: dict[str, np.ndarray], checksum: str) -> None:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, checksum=np.array(checksum), **arrays)
        os.replace(tmp, path)  # readers see the old file or the whole new one, never a part
    except OSError as err:
        warnings.warn(f"{path}: cannot write the data cache ({err}); continuing without it", stacklevel=3)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def load_digits(cfg) -> Digits:
    """The prepared digits for a data config (a Mapping or the `data` DictConfig)."""
    options = _options(cfg)
    _check_targets(cfg)
    key = cache_key(cfg)
    path = _cache_path(cfg, options, key)
    arrays = _read_cache(path, options) if path is not None else None
    if arrays is None:
        arrays = _build(cfg, options)
        if path is not None:
            _write_cache(path, arrays, fingerprint(arrays))
    tensors = {name: torch.from_numpy(arrays[name]) for name in ARRAYS}
    return Digits(**tensors, fingerprint=fingerprint(arrays))
