"""Small digit files in every format zipnet reads, written by the tests themselves."""

import bz2
import gzip
import hashlib

import numpy as np


def digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n fake 16x16 digits in [-1, 1] (4 decimals, as the ESL files print) and labels 0..9."""
    rng = np.random.default_rng(seed)
    images = np.round(rng.uniform(-1, 1, size=(n, 256)), 4)
    images[:, :40] = -1.0  # background rows, so LIBSVM has zeros to leave out... and -1s to keep
    images[:, 40:60] = 0.0
    return images, np.arange(n) % 10


def idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def libsvm(images: np.ndarray, labels: np.ndarray) -> bytes:
    lines = []
    for row, label in zip(images, labels, strict=True):
        pairs = " ".join(f"{i + 1}:{v:g}" for i, v in enumerate(row) if v != 0)
        lines.append(f"{label + 1} {pairs}")  # LIBSVM's usps numbers digits 1..10
    return ("\n".join(lines) + "\n").encode()


def esl(images: np.ndarray, labels: np.ndarray) -> bytes:
    return "".join(
        f"{label:.4f} " + " ".join(f"{v:.4f}" for v in row) + " \n" for row, label in zip(images, labels, strict=True)
    ).encode()


def h5(path, splits: dict) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        for name, (images, labels) in splits.items():
            f.create_dataset(f"{name}/data", data=((images + 1) / 2).astype(np.float32))
            f.create_dataset(f"{name}/target", data=labels.astype(np.int32))


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def bz(data: bytes) -> bytes:
    return bz2.compress(data)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()
