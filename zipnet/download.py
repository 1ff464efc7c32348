"""Fetch a data file from a list of mirrors, verified, without ever leaving a half file.

    path = fetch(Remote("usps.bz2", (url1, url2), md5="..."), root)

Each URL is tried in order. A download goes to a hidden temporary name in `root` and is
renamed to its real name only after its checksum (or, for files with no published
checksum, a content check) passes; anything else deletes the temporary file and moves on
to the next URL. When every URL fails, `DownloadError` lists each one and why.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from zipnet.errors import DataError

CHUNK = 1 << 16
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Remote:
    name: str               # the file's name under root
    urls: tuple[str, ...]   # tried in order
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


class _Bar:
    """`name  42%  4.1/9.9 MB` redrawn in place; only on a terminal."""

    def __init__(self, name: str, total: int | None, enabled: bool | None):
        self.stream = sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.name, self.total = name, total

    def update(self, done: int) -> None:
        if self.enabled:
            pct = f"{100 * done // self.total:3d}%" if self.total else "    "
            size = f"{done / 1e6:.1f}/{self.total / 1e6:.1f} MB" if self.total else f"{done / 1e6:.1f} MB"
            self.stream.write(f"\r{self.name}  {pct}  {size}")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _download(url: str, dest, name: str, progress: bool | None, timeout: float) -> None:
    """Stream `url` into the open file `dest`; raise on HTTP errors and short transfers."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        bar, done = _Bar(name, total, progress), 0
        try:
            while block := response.read(CHUNK):
                dest.write(block)
                done += len(block)
                bar.update(done)
        finally:
            bar.close()
    if total is not None and done != total:
        raise OSError(f"transfer interrupted: got {done} of {total} bytes")


def _reason(err: Exception) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    return f"{type(err).__name__}: {getattr(err, 'reason', None) or err}"


def fetch(remote: Remote, root: str | os.PathLike, *, check: Callable[[Path], None] | None = None,
          hint: str = "", progress: bool | None = None, timeout: float = TIMEOUT_S,
          log: Callable[[str], None] | None = None) -> Path:
    """`root/remote.name`, downloaded first unless a verified copy is there.

    `check(path)` runs after the checksums (or instead, when the file has none) and raises
    DataError when the content is wrong. `hint` ends the error when every URL fails.
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

    tried: list[tuple[str, str]] = []
    for url in remote.urls:
        fd, tmp_name = tempfile.mkstemp(dir=root, prefix=f".{remote.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as dest:
                if log:
                    log(f"downloading {url}")
                _download(url, dest, remote.name, progress, timeout)
            bad = problem(tmp)
            if bad is not None:
                tried.append((url, bad))
                continue
            os.replace(tmp, final)  # only a verified file gets the real name
            return final
        except (OSError, http.client.HTTPException, ValueError) as err:  # URLError, HTTPError, timeouts are OSErrors
            tried.append((url, _reason(err)))
        finally:
            tmp.unlink(missing_ok=True)

    lines = [f"could not download {remote.name}; tried:"] + [f"  {url}: {why}" for url, why in tried]
    if hint:
        lines.append(hint)
    raise DownloadError("\n".join(lines), tried)
