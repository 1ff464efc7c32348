"""The spool: a tracker's writes to an MLflow server, kept on local disk until the server has them.

Against a tracking server (http://, https://) every write of a Tracker (params, tags, metrics,
datasets, files, models, a run's end: zipnet/tracking/writes.py) is one request file in this
worker's folder, `<tracking.spool_dir>/<host>-<pid>-<hex>/000000042.json`, numbered in order, the
files it uploads in the folder `000000042/` beside it. A sender thread sends them oldest first
and deletes each once the server has taken it. While the server cannot be reached, requests
pile up on disk and training goes on; the sender tries the oldest again with backoff (0.5 s
doubling to 10 s) and, once the server answers, sends the backlog in order. Only a call that
needs the server's answer (creating a run: its id comes from the server) waits, as patiently.

An outage longer than `timeout` (tracking.outage_timeout) stops the worker as SIGTERM does (its
trials given back), in one line; what it had not sent stays on disk, and the next tracker on
the same spool_dir and server sends it first. A request the server refuses (not an outage) is
dropped, and its run ends FAILED with the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from zipnet import preempt
from zipnet.errors import StoreError, first_line

DEFAULT_DIR = "mlruns/spool"  # under the folder the worker starts in
STORE = "store.json"  # which server a spool's requests are for
LOCK = ".lock"  # held by the worker writing the spool; free once it is gone


def unreachable(err: BaseException | None) -> bool:
    """Whether the error says the server could not be reached (refused, cut, timed out, or still
    failing after MLflow's own retries), not that it refused the request: MLflow wraps the error
    of `requests` in its own."""
    import requests

    away = (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.RetryError,
        requests.exceptions.ChunkedEncodingError,
        ConnectionError,
        TimeoutError,
    )
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, away):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def _cause(err: BaseException) -> str:
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    return f"{type(err).__name__}: {first_line(err)[:160]}"


def _hold(folder: Path) -> int | None:
    """The folder's lock, taken (an open descriptor, held until closed or the process ends); None
    where another process holds it."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _write(path: Path, request: dict) -> None:
    """Whole or not at all: the sender never reads half a request. Not fsynced: the spool is for
    the server's outages and the worker's stop; a host that loses power loses its trials too."""
    part = path.with_suffix(".part")
    part.write_text(json.dumps(request))
    part.replace(path)


def _requests(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.json") if p.name != STORE)


class Spool:
    """A worker's pending requests to the server at `uri`, on disk under `root`, and the thread that
    sends them. `deliver(request, files)` sends one; `refused(request, err)` hears of one the
    server would not take."""

    def __init__(
        self,
        root: Path,
        uri: str,
        deliver: Callable[[dict, Path | None], None],
        refused: Callable[[dict, BaseException], None],
        timeout: float,
        log: Callable[[str], None] | None = None,
    ):
        self.root, self.uri, self.timeout = Path(root).absolute(), uri, timeout
        self.deliver, self.refused = deliver, refused
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.root.mkdir(parents=True, exist_ok=True)
        self.folder = self.root / f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.folder.mkdir()
        self._lock = _hold(self.folder)
        (self.folder / STORE).write_text(json.dumps({"uri": uri}))
        self._queue: deque[str] = deque()  # this worker's requests not yet taken, oldest first
        self._next = 0
        self._cond = threading.Condition()
        self._closing = False
        self.away_since: float | None = None  # monotonic: the first failed try of the current outage
        self.gave_up = False  # the outage outlasted `timeout`: nothing more is sent
        self._signalled = False  # ... and the sender stopped the main thread (zipnet.preempt.stop)
        self._left = self._adopt()
        self._adopting = bool(self._left)  # sending them: a drain waits for them too (they come first)
        self._thread = threading.Thread(target=self._run, name="zipnet-spool", daemon=True)
        self._thread.start()

    # -- what a tracker calls ----------------------------------------------------------------

    def put(self, request: dict, files: Path | None = None) -> None:
        """Spool one request (with a copy of the folder `files`), after every one before it."""
        with self._cond:
            name = f"{self._next:09d}"
            self._next += 1
            if files is not None:
                shutil.copytree(files, self.folder / name)
            _write(self.folder / f"{name}.json", request)
            self._queue.append(name)
            self._cond.notify_all()

    @property
    def away(self) -> bool:
        """Whether the server is known not to answer now."""
        return self.away_since is not None or self.gave_up

    def call(self, what: str, fn: Callable):
        """`fn()`, tried again with backoff while the server cannot be reached, within the same
        bound as the spool's own writes (a call that needs the server's answer)."""
        delay = 0.5
        while True:
            if self.gave_up:
                self._stopping(what)
            try:
                out = fn()
            except Exception as err:
                if not unreachable(err):
                    raise
                if not self._away(what, err, here=True):
                    raise StoreError(f"MLflow server {self.uri}: {what}: unreachable") from err  # no handler
                time.sleep(delay)
                delay = min(2 * delay, 10.0)
                continue
            self._back()
            return out

    def _stopping(self, what: str) -> None:
        """The sender gave up and signalled the main thread, whose Preempted comes at once; else
        (no zipnet-train around this tracker) a StoreError."""
        if self._signalled and threading.current_thread() is threading.main_thread():
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                time.sleep(0.1)
        raise StoreError(f"MLflow server {self.uri}: {what}: unreachable past tracking.outage_timeout")

    def drain(self) -> bool:
        """Wait until the server has every request spooled so far (a stopped worker's it sends
        included); False at once if it never will (the outage outlasted the bound)."""
        with self._cond:
            while (self._queue or self._adopting) and not self.gave_up and self._thread.is_alive():
                self._cond.wait(0.5)  # timed: the main thread's signal handlers run meanwhile
            return not self._queue

    def close(self) -> None:
        """Stop the sender once it has nothing left; remove the folder if it is empty."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        if not _requests(self.folder):
            shutil.rmtree(self.folder, ignore_errors=True)
            with contextlib.suppress(OSError):  # the last worker's: no empty folder left behind
                self.root.rmdir()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # -- the sender ------------------------------------------------------------------------

    def _adopt(self) -> list[tuple[Path, int]]:
        """Spools for this server that stopped workers left under `root`: sent before this one's."""
        found = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and p != self.folder):
            try:
                uri = json.loads((folder / STORE).read_text())["uri"]
            except (OSError, ValueError, KeyError):
                continue
            if uri != self.uri:
                continue
            fd = _hold(folder)
            if fd is None:  # its worker is alive
                continue
            found.append((folder, fd))
            self.log(f"MLflow: sending the {len(_requests(folder))} writes a stopped worker left in {folder}")
        return found

    def _run(self) -> None:
        for folder, fd in self._left:
            for name in _requests(folder):
                if not self._send(folder, name):
                    return
            shutil.rmtree(folder, ignore_errors=True)
            os.close(fd)
        with self._cond:
            self._adopting = False
            self._cond.notify_all()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                name = self._queue[0]
            sent = self._send(self.folder, name)
            with self._cond:
                if sent:
                    self._queue.popleft()
                self._cond.notify_all()
            if not sent:
                return

    def _send(self, folder: Path, name: str) -> bool:
        """One request, tried until the server takes or refuses it; False once the outage
        outlasted the bound (it stays on disk)."""
        path, files = folder / f"{name}.json", folder / name
        request = json.loads(path.read_text())
        delay = 0.5
        while True:
            try:
                self.deliver(request, files if files.is_dir() else None)
            except Exception as err:
                if not unreachable(err):
                    self.refused(request, err)
                    break
                _write(path, request)  # the steps a model's request has done so far
                if not self._away(request["op"], err, here=False):
                    return False
                time.sleep(delay)
                delay = min(2 * delay, 10.0)
                continue
            self._back()
            break
        path.unlink()
        shutil.rmtree(files, ignore_errors=True)
        return True

    # -- the outage ------------------------------------------------------------------------

    def _away(self, what: str, err: BaseException, here: bool) -> bool:
        """Note a failed try; False once the outage has lasted `timeout` (the worker stops: from
        the main thread `here` by raising, from the sender by signalling the main thread)."""
        now = time.monotonic()
        with self._cond:
            first = self.away_since is None
            if first:
                self.away_since = now
            since, queued = self.away_since, len(self._queue)
        if first:
            self.log(
                f"MLflow server {self.uri} unreachable ({what}: {_cause(err)}); training goes on, its writes "
                f"spooled in {self.folder} ({queued} so far) and sent in order once it answers; this worker "
                f"stops if it stays away {self.timeout:g} s (tracking.outage_timeout)"
            )
        if now - since < self.timeout:
            return True
        reason = (
            f"MLflow server {self.uri} unreachable for {self.timeout:g} s (tracking.outage_timeout; {_cause(err)}); "
            f"this worker stops; its unsent writes stay in {self.folder}, sent by the next worker "
            f"with tracking.spool_dir={self.root}"
        )
        main = here and threading.current_thread() is threading.main_thread()
        with self._cond:  # one of the main thread and the sender stops the worker, once
            if self.gave_up:
                return False
            self.gave_up = True
            self._signalled = not main and preempt.active()
            self._cond.notify_all()
        if main and preempt.active():
            raise preempt.Preempted(signal.SIGTERM, reason)
        if self._signalled:
            preempt.stop(reason)
            return False
        self.log(reason)  # no zipnet-train around this tracker to stop: said here
        return False

    def _back(self) -> None:
        with self._cond:
            since, self.away_since = self.away_since, None
            queued = len(self._queue)
        if since is not None:
            self.log(
                f"MLflow server answers again after {time.monotonic() - since:.0f} s; "
                f"sending the {queued} spooled writes in order"
            )
