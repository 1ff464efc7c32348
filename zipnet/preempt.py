"""Preemption: SIGTERM and SIGHUP stop a run or a sweep as Ctrl-C does.

Schedulers, `timeout` and spot reclaims send SIGTERM; a closed terminal sends SIGHUP. Inside
`signals()` both raise `Preempted`, a KeyboardInterrupt, in the main thread, so every path
that cleans up after Ctrl-C (runs ended KILLED, trials given back) runs for them too. The
process then exits 128 + the signal's number, as a shell reports a process killed by it.
"""

from __future__ import annotations

import contextlib
import signal
import threading

CAUGHT = (signal.SIGTERM, signal.SIGHUP)


class Preempted(KeyboardInterrupt):
    """A stop signal arrived; `signum` says which."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


# Signals are delivered to the process, so this state is the process's (main thread only).
_held: list[int] = []  # signals that arrived inside `critical()`, raised at its end
_depth = 0


def _raise(signum, frame):
    if _depth:
        _held.append(signum)
        return
    raise Preempted(signum)


@contextlib.contextmanager
def critical():
    """A step that must not be cut in half (create a run and record it): a stop signal that
    arrives inside is raised when the step is done."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if not _depth and _held:
        raise Preempted(_held.pop(0))


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
    """128 + the signal: 143 for SIGTERM, 129 for SIGHUP, 130 for Ctrl-C."""
    return 128 + (err.signum if isinstance(err, Preempted) else signal.SIGINT)


def describe(err: KeyboardInterrupt) -> str:
    return str(err) if isinstance(err, Preempted) else "interrupted (Ctrl-C)"
