"""Fetch a data file from a list of mirrors, verified, without ever leaving a half file.

    path = fetch(Remote("usps.bz2", (url1, url2), md5="..."), root)

Each URL is tried in order with `pooch.retrieve`, which streams it to a temporary file and
keeps it only when its hash matches. The file lands in a private staging folder under
`root` and gets its real name only after every check passes (the other checksum, the
content check for files with no published checksum); anything else deletes it and moves on
to the next URL. When every URL fails, `DownloadError` lists each one and why.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pooch
import requests
from tqdm import tqdm

from zipnet.errors import DataError

CHUNK = 1 << 16
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Remote:
    name: str  # the file's name under root
    urls: tuple[str, ...]  # tried in order
    md5: str | None = None
    sha256: str | None = None


class DownloadError(DataError):
    """Every URL failed. `tried` holds (url, reason) pairs."""

    def __init__(self, message: str, tried: Sequence[tuple[str, str]]):
        super().__init__(message)
        self.tried = list(tried)


def digests(path: Path) -> dict[str, str]:
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            md5.update(block)
            sha256.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def mismatch(remote: Remote, path: Path) -> str | None:
    """None when `path` has the remote's checksums, else 'expected ... got ...'."""
    actual = digests(path)
    for algo in ("md5", "sha256"):
        expected = getattr(remote, algo)
        if expected is not None and actual[algo] != expected.lower():
            return f"checksum mismatch: expected {algo} {expected}, got {actual[algo]}"
    return None


def _reason(err: Exception) -> str:
    """One line on why a URL failed."""
    if isinstance(err, requests.HTTPError) and err.response is not None:
        return f"HTTP {err.response.status_code} {err.response.reason}"
    if isinstance(err, ValueError):  # pooch: "MD5 hash of downloaded file (x) does not match ... got y. Deleted ..."
        return "checksum mismatch: " + str(err).split(". ")[0]
    cause = err  # requests wraps urllib3's error, which wraps the socket's: the innermost says it plainly
    while cause.__cause__ or cause.__context__:
        cause = cause.__cause__ or cause.__context__
    return f"{type(err).__name__}: {cause}"


class _Bar(tqdm):
    """A download's bar, which pooch takes before it knows the size (it draws only if bool(bar),
    and a tqdm without a total has no truth value)."""

    def __bool__(self) -> bool:
        return True


@contextmanager
def _quiet_pooch():
    """pooch logs every download, and for unhashed files advises pinning the hash; zipnet
    logs its own line and checks those files' content instead."""
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def fetch(
    remote: Remote,
    root: str | os.PathLike,
    *,
    check: Callable[[Path], None] | None = None,
    hint: str = "",
    progress: bool | None = None,
    timeout: float = TIMEOUT_S,
    log: Callable[[str], None] | None = None,
) -> Path:
    """`root/remote.name`, downloaded first unless a verified copy is there.

    `check(path)` runs after the checksums (or instead, when the file has none) and raises
    DataError when the content is wrong. `hint` ends the error when every URL fails.
    `progress`: a tqdm bar per download; None draws it only on a terminal.
    """
    if remote.md5 is None and remote.sha256 is None and check is None:
        raise ValueError(f"{remote.name}: give a checksum or a content check; unverified files are not accepted")
    root = Path(root).expanduser()
    final = root / remote.name

    def problem(path: Path) -> str | None:
        bad = mismatch(remote, path)
        if bad is None and check is not None:
            try:
                check(path)
            except DataError as err:
                bad = f"content check failed: {err}"
        return bad

    if final.is_file():
        bad = problem(final)
        if bad is None:
            return final
        raise DataError(f"{final}: {bad}. Delete it to download it again, or replace it with a good copy")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{root}: cannot create the data folder ({err}); set data.root to a writable folder") from err

    known_hash = f"sha256:{remote.sha256}" if remote.sha256 else f"md5:{remote.md5}" if remote.md5 else None
    show = sys.stderr.isatty() if progress is None else progress
    tried: list[tuple[str, str]] = []
    for url in remote.urls:
        try:
            staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{remote.name}."))  # this process's own
        except OSError as err:
            raise DataError(f"{root}: cannot write there ({err}); set data.root to a writable folder") from err
        bar = _Bar(desc=remote.name, unit="B", unit_scale=True) if show else False
        try:
            if log:
                log(f"downloading {url}")
            downloader = pooch.HTTPDownloader(progressbar=bar, chunk_size=CHUNK, timeout=timeout)
            with _quiet_pooch():
                got = Path(pooch.retrieve(url, known_hash, fname=remote.name, path=staging, downloader=downloader))
            bad = problem(got)
            if bad is not None:
                tried.append((url, bad))
                continue
            os.replace(got, final)  # only a verified file gets the real name
            return final
        except (OSError, ValueError, requests.RequestException) as err:
            tried.append((url, _reason(err)))
        finally:
            if bar:
                bar.close()
            shutil.rmtree(staging, ignore_errors=True)

    lines = [f"could not download {remote.name}; tried:"] + [f"  {url}: {why}" for url, why in tried]
    if hint:
        lines.append(hint)
    raise DownloadError("\n".join(lines), tried)
