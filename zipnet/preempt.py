"""Preemption: SIGTERM and SIGHUP stop a run or a sweep as Ctrl-C does.

Schedulers, `timeout` and spot reclaims send SIGTERM; a closed terminal sends SIGHUP. Inside
`signals()` both raise `Preempted`, a KeyboardInterrupt, in the main thread, so every path
that cleans up after Ctrl-C (runs ended KILLED, trials given back) runs for them too. The
process then exits 128 + the signal's number, as a shell reports a process killed by it.
Another thread that finds the process cannot go on (the MLflow server away past its bound,
zipnet/tracking/spool.py; the local store's disk full or read-only, zipnet/tracking/runs.py) stops
it the same way with `stop(reason)`: exit 2, the reason said.
"""

from __future__ import annotations

import contextlib
import signal
import threading

CAUGHT = (signal.SIGTERM, signal.SIGHUP)


class Preempted(KeyboardInterrupt):
    """A stop signal arrived; `signum` says which, `reason` why when another thread sent it (`stop`)."""

    def __init__(self, signum: int, reason: str | None = None):
        super().__init__(reason or f"stopped by {signal.Signals(signum).name}")
        self.signum, self.reason = signum, reason


# Signals are delivered to the process, so this state is the process's (main thread only).
_held: list[int] = []  # signals that arrived inside `critical()`, raised at its end
_depth = 0
_whole = 0  # inside `critical(stops_too=True)`: every stop, `stop`'s too, waits for the step's end
_reasons: list[str] = []  # why `stop` sent SIGTERM, for the Preempted it raises


def _preempted(signum: int) -> Preempted:
    return Preempted(signum, _reasons.pop(0) if signum == signal.SIGTERM and _reasons else None)


def _raise(signum, frame):
    if _whole or (_depth and not _reasons):  # a `stop` waits only for critical(stops_too=True)
        _held.append(signum)
        return
    raise _preempted(signum)


def active() -> bool:
    """Whether `signals()` is in force: a stop signal raises Preempted in the main thread."""
    return signal.getsignal(signal.SIGTERM) is _raise


def stop(reason: str) -> bool:
    """From any thread: the main thread stops as on SIGTERM, saying `reason` (exit 2). Only inside
    `signals()`; elsewhere nothing happens and this returns False."""
    if not active():
        return False
    _reasons.append(reason)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)  # wakes a main thread that sleeps
    return True


@contextlib.contextmanager
def critical(stops_too: bool = False):
    """A step that must not be cut in half (create a run and record it): a stop signal that
    arrives inside is raised when the step is done. A `stop` (another thread's: the step may be
    what cannot finish) is raised at once, unless `stops_too`: a short step that needs only the
    storage, such as asking a trial and noting it for the give-back."""
    global _depth, _whole
    _depth += 1
    _whole += stops_too
    try:
        yield
    finally:
        _depth -= 1
        _whole -= stops_too
    if not _depth and _held:
        raise _preempted(_held.pop(0))


@contextlib.contextmanager
def signals():
    """SIGTERM and SIGHUP raise Preempted while inside (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.signal(sig, _raise) for sig in CAUGHT}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def exit_code(err: KeyboardInterrupt) -> int:
    """128 + the signal: 143 for SIGTERM, 129 for SIGHUP, 130 for Ctrl-C; 2 for a `stop` with a reason."""
    if isinstance(err, Preempted) and err.reason:
        return 2
    return 128 + (err.signum if isinstance(err, Preempted) else signal.SIGINT)


def describe(err: KeyboardInterrupt) -> str:
    return str(err) if isinstance(err, Preempted) else "interrupted (Ctrl-C)"
