"""Readers for the digit file formats, numpy only (h5py for HDF5). The format is told from
the content, never the name; gzip and bzip2 are undone first. Every error names the file
and the line or byte offset.

- IDX (MNIST): magic 0x0000 0x08 ndim, ndim big-endian uint32 sizes, then uint8 data.
- LIBSVM (usps, usps.t): `label idx:value ...`, labels 1..10 (digit = label - 1),
  idx 1..256 row-major, values in [-1, 1], absent entries 0.
- ESL (zip.train, zip.test): `label v1 ... v256`, labels 0..9, values in [-1, 1].
- HDF5 (usps.h5): groups train and test, each with data (N, 256) in [0, 1] and target 0..9.
"""

from __future__ import annotations

import bz2
import zlib
from math import prod
from pathlib import Path

import numpy as np

from zipnet.errors import DataError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
GZIP_MAGIC = b"\x1f\x8b"
BZIP2_MAGIC = b"BZh"
PIXELS = 256
_CHUNK = 1 << 16


def read_bytes(path: Path, limit: int | None = None) -> bytes:
    """The file's bytes, gunzipped or bunzipped when its magic says so. With `limit`, only
    the start: at least `limit` decoded bytes where the file has them (to tell its format)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err})") from err
    if raw.startswith(GZIP_MAGIC):
        kind, decoder = "gzip", zlib.decompressobj(wbits=31)  # 31: gzip header and CRC check
    elif raw.startswith(BZIP2_MAGIC):
        kind, decoder = "bzip2", bz2.BZ2Decompressor()
    else:
        return raw[:limit]
    out, decoded = [], 0
    for offset in range(0, len(raw), _CHUNK):
        try:
            out.append(decoder.decompress(raw[offset : offset + _CHUNK]))
        except (zlib.error, OSError, ValueError) as err:
            raise DataError(
                f"{path}: {kind} data damaged in compressed bytes {offset}..{offset + _CHUNK} ({err})"
            ) from err
        decoded += len(out[-1])
        if decoder.eof or (limit is not None and decoded >= limit):
            return b"".join(out)
    raise DataError(
        f"{path}: {kind} stream ends early at compressed offset {len(raw)} "
        f"({decoded} bytes decoded); the file is truncated"
    )


# --- IDX ---------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped or not) as a uint8 array of its shape."""
    data = read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: offset 0: not an IDX file (magic {data[:4].hex() or 'missing'}, want 0000 08 nn)")
    if data[2] != 0x08:
        raise DataError(f"{path}: offset 2: IDX type 0x{data[2]:02x} is not supported; only 0x08 (unsigned byte)")
    ndim, header = data[3], 4 + 4 * data[3]
    if ndim == 0 or len(data) < header:
        raise DataError(f"{path}: offset 4: IDX header of {ndim} sizes is truncated ({len(data)} bytes in all)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    want, have = prod(shape), len(data) - header
    if have < want:
        raise DataError(
            f"{path}: offset {len(data)}: truncated; the header promises {shape} = {want} bytes "
            f"after offset {header}, the file holds {have}"
        )
    if have > want:
        raise DataError(f"{path}: offset {header + want}: {have - want} bytes beyond the {shape} the header promises")
    return np.frombuffer(data, dtype=np.uint8, count=want, offset=header).reshape(shape)


# --- text: LIBSVM and ESL ---------------------------------------------------------------


def _lines(path: Path, data: bytes):
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line} (decoded offset {err.start}): not text (byte 0x{data[err.start]:02x})"
        ) from err
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line


def text_format(path: Path, data: bytes) -> str:
    """'libsvm' or 'esl', from the first non-empty line."""
    for number, line in _lines(path, data):
        tokens = line.split()
        if len(tokens) > 1 and ":" in tokens[1]:
            return "libsvm"
        if len(tokens) == PIXELS + 1:
            return "esl"
        raise DataError(
            f"{path}: line {number}: neither LIBSVM (`label idx:value ...`) nor ESL "
            f"(a label and {PIXELS} values); it has {len(tokens)} fields"
        )
    raise DataError(f"{path}: empty; expected LIBSVM or ESL text")


def _check_range(path: Path, number: int, values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)) or values.min() < -1.0001 or values.max() > 1.0001:
        raise DataError(f"{path}: line {number}: values outside [-1, 1] ({values.min()}..{values.max()})")


def parse_libsvm(path: Path, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for number, line in _lines(path, data):
        tokens = line.split()
        try:
            label = float(tokens[0])
            row = np.zeros(PIXELS, dtype=np.float32)
            for token in tokens[1:]:
                index, value = token.split(":")
                index = int(index)
                if not 1 <= index <= PIXELS:
                    raise ValueError(f"index {index} outside 1..{PIXELS}")
                row[index - 1] = float(value)
        except ValueError as err:
            raise DataError(f"{path}: line {number}: not `label idx:value ...` ({err})") from err
        if label != int(label) or not 1 <= label <= 10:
            raise DataError(
                f"{path}: line {number}: label {tokens[0]} is not 1..10 (LIBSVM's usps numbers digits 1..10)"
            )
        _check_range(path, number, row)
        images.append(row)
        labels.append(int(label) - 1)
    return np.stack(images).reshape(-1, 16, 16), np.asarray(labels, dtype=np.int64)


def parse_esl(path: Path, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for number, line in _lines(path, data):
        tokens = line.split()
        if len(tokens) != PIXELS + 1:
            raise DataError(
                f"{path}: line {number}: {len(tokens)} fields, expected a label and {PIXELS} values (a truncated file?)"
            )
        try:
            values = np.asarray(tokens, dtype=np.float64)
        except ValueError as err:
            raise DataError(f"{path}: line {number}: not numbers ({err})") from err
        label = values[0]
        if label != int(label) or not 0 <= label <= 9:
            raise DataError(f"{path}: line {number}: label {tokens[0]} is not 0..9")
        _check_range(path, number, values[1:])
        images.append(values[1:].astype(np.float32))
        labels.append(int(label))
    return np.stack(images).reshape(-1, 16, 16), np.asarray(labels, dtype=np.int64)


# --- HDF5 ---------------------------------------------------------------------------------


def read_h5(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (images, labels), 'test': ...}: images float32 (N, 16, 16) mapped to [-1, 1]."""
    import h5py  # only the sources that read HDF5 pay for the import

    out = {}
    try:
        with h5py.File(path, "r") as f:
            for split in ("train", "test"):
                if f.get(f"{split}/data") is None or f.get(f"{split}/target") is None:
                    raise DataError(
                        f"{path}: no {split}/data or {split}/target; expected groups train and test, "
                        f"each with data (N, {PIXELS}) in [0, 1] and target 0..9"
                    )
                x, y = np.asarray(f[f"{split}/data"], dtype=np.float32), np.asarray(f[f"{split}/target"])
                out[split] = (x, y)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 -- h5py raises OSError, KeyError, ValueError on damaged files
        raise DataError(f"{path}: unreadable HDF5 ({type(err).__name__}: {err})") from err
    for split, (x, y) in out.items():
        if x.ndim != 2 or x.shape[1] != PIXELS or y.shape != (len(x),):
            raise DataError(
                f"{path}: {split}/data has shape {x.shape} and target {y.shape}; expected (N, {PIXELS}) and (N,)"
            )
        if len(x) and (not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1):
            raise DataError(f"{path}: {split}/data: values outside [0, 1] ({x.min()}..{x.max()})")
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise DataError(f"{path}: {split}/target: labels outside 0..9 ({y.min()}..{y.max()})")
        out[split] = ((2.0 * x - 1.0).reshape(-1, 16, 16), y.astype(np.int64))  # usps.h5's own README: 2x - 1
    return out


# --- any USPS file ---------------------------------------------------------------------------


def is_hdf5(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(HDF5_MAGIC)) == HDF5_MAGIC


def usps_format(path: Path) -> str:
    """'hdf5', 'libsvm' or 'esl', told from the content's start; anything else is a DataError
    that says it is none of them (an empty or garbage usps.h5 is not a split missing its test file)."""
    if is_hdf5(path):
        return "hdf5"
    try:
        return text_format(path, read_bytes(path, limit=_CHUNK))
    except DataError as err:
        why = str(err).removeprefix(f"{path}: ")
        raise DataError(f"{path}: not a readable HDF5, LIBSVM or ESL file ({why})") from err


def read_usps_split(path: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """One split from a LIBSVM or ESL file (compressed or not): (format, images, labels)."""
    data = read_bytes(path)
    fmt = text_format(path, data)
    images, labels = (parse_libsvm if fmt == "libsvm" else parse_esl)(path, data)
    return fmt, images, labels
