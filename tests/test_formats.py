"""The file readers on small generated files: each format, compressed or plain, told apart
by content; damaged files give errors that name the file and the line or offset."""

import digit_files as make
import numpy as np
import pytest

from zipnet.errors import DataError
from zipnet.sources.formats import read_h5, read_idx, read_usps_split


@pytest.fixture
def sample():
    return make.digits(12)


@pytest.mark.parametrize("compress", [None, make.gz])
def test_idx_round_trip(tmp_path, compress):
    images = np.random.default_rng(1).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    for array in (images, np.arange(5, dtype=np.uint8)):
        path = tmp_path / "file-without-a-telling-name"
        blob = make.idx(array)
        path.write_bytes(compress(blob) if compress else blob)
        np.testing.assert_array_equal(read_idx(path), array)


def test_idx_truncated_names_file_and_offset(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    blob = make.idx(np.zeros((5, 28, 28), dtype=np.uint8))
    path.write_bytes(blob[:-100])
    with pytest.raises(DataError, match=rf"{path.name}: offset {len(blob) - 100}: truncated"):
        read_idx(path)
    path.write_bytes(b"\x12\x34" + blob[2:])
    with pytest.raises(DataError, match=rf"{path.name}: offset 0: not an IDX file"):
        read_idx(path)


def test_truncated_gzip_names_file_and_offset(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    blob = make.gz(make.idx(np.random.default_rng(0).integers(0, 256, size=(50, 28, 28), dtype=np.uint8)))
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=rf"{path.name}: gzip stream ends early at compressed offset {len(blob) // 2}"):
        read_idx(path)


def test_garbled_gzip_names_file_and_offset(tmp_path):
    path = tmp_path / "x.gz"
    blob = bytearray(make.gz(make.idx(np.random.default_rng(0).integers(0, 256, size=(50, 28, 28), dtype=np.uint8))))
    blob[-8:-4] = bytes(4)  # the CRC
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=rf"{path.name}: gzip data damaged in compressed bytes 0\.\."):
        read_idx(path)


@pytest.mark.parametrize("fmt, writer", [("libsvm", make.libsvm), ("esl", make.esl)])
@pytest.mark.parametrize("compress", [None, make.gz, make.bz])
def test_text_formats_round_trip_and_are_told_by_content(tmp_path, sample, fmt, writer, compress):
    images, labels = sample
    blob = writer(images, labels)
    path = tmp_path / "data.txt"  # the name says nothing about the format
    path.write_bytes(compress(blob) if compress else blob)
    got_fmt, got_images, got_labels = read_usps_split(path)
    assert got_fmt == fmt
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.shape == (12, 16, 16) and got_images.dtype == np.float32
    np.testing.assert_allclose(got_images.reshape(12, 256), images, atol=1e-6)


def test_h5_round_trip(tmp_path, sample):
    images, labels = sample
    path = tmp_path / "digits.dat"
    make.h5(path, {"train": (images[:8], labels[:8]), "test": (images[8:], labels[8:])})
    splits = read_h5(path)
    np.testing.assert_allclose(splits["train"][0].reshape(8, 256), images[:8], atol=1e-6)
    np.testing.assert_array_equal(splits["test"][1], labels[8:])


@pytest.mark.parametrize(
    "writer, cut, expect",
    [
        (make.esl, lambda b: b[: b.index(b"\n", 3000) - 50], r"line \d+: \d+ fields, expected a label and 256"),
        (make.libsvm, lambda b: b.replace(b" 61:", b" 61;", 1), r"line 1: not `label idx:value"),
        (make.libsvm, lambda b: b.replace(b"\n1 ", b"\n11 ", 1), r"line 11: label 11 is not 1\.\.10"),
        (make.esl, lambda b: b.replace(b" 0.0000", b" 7.0000", 1), r"line 1: values outside \[-1, 1\]"),
        (make.esl, lambda b: b[:500] + b"\xff\xfe" + b[502:], r"line 1 \(decoded offset 500\): not text"),
    ],
)
def test_damaged_text_names_file_and_line(tmp_path, sample, writer, cut, expect):
    path = tmp_path / "zip.train"
    path.write_bytes(cut(writer(*sample)))
    with pytest.raises(DataError, match=rf"{path.name}: {expect}"):
        read_usps_split(path)


def test_truncated_bz2_names_file(tmp_path, sample):
    path = tmp_path / "usps.bz2"
    blob = make.bz(make.libsvm(*sample))
    path.write_bytes(blob[:-30])
    with pytest.raises(DataError, match=rf"{path.name}: bzip2 stream ends early at compressed offset {len(blob) - 30}"):
        read_usps_split(path)


def test_unknown_text_names_file_and_line(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"\nhello world\n")
    with pytest.raises(DataError, match=rf"{path.name}: line 2: neither LIBSVM .* nor ESL"):
        read_usps_split(path)


def test_damaged_h5_names_file(tmp_path, sample):
    path = tmp_path / "usps.h5"
    make.h5(path, {"train": (sample[0], sample[1])})
    with pytest.raises(DataError, match=rf"{path.name}: no test/data"):
        read_h5(path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 3])
    with pytest.raises(DataError, match=rf"{path.name}: unreadable HDF5"):
        read_h5(path)
