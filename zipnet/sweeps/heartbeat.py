"""A worker's heartbeat: Optuna's RDB heartbeat for the trials it holds, from ask to end.

Optuna's own heartbeat (in `study.optimize`) covers one trial, from the start of its objective
to its end. A zipnet worker holds a batch, and a trial of it is asked before Hydra sets its job
up, so the heartbeat covers each trial from its ask until it is told: `cover` on ask, `release`
on tell. The thread runs while it covers a trial and stops with the last one. With every beat
it also calls `on_beat` (the coordinator's recovery of other workers' stale trials).

A beat that fails (the storage restarting, the network gone) is logged once, with the error,
and again when the storage answers; the thread keeps beating every interval meanwhile. A beat
that could not be written is not silence: while its own beats fail, and for a grace period after
the storage last failed it, a worker judges no other worker's trial stale (storage.Patient.steady),
since their beats failed too. Trials silent past the grace period after that are failed by
whichever worker next recovers, so an outage longer than outage_timeout costs the workers that
gave up their trials, never the study its count.

A storage without Optuna's heartbeat (GrpcStorageProxy: the proxy's API has no heartbeat call)
gets a beat of zipnet's own through calls every storage has: each beat writes the trial's
system attribute `zipnet.beat`, and `Silence` judges a trial stale when that attribute has not
changed for the grace period, as the judging worker saw it on its own monotonic clock (no
host's wall clock is compared with another's). After an outage that period starts anew once the
judging worker is steady, since the others may reconnect to the proxy later than it did.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from zipnet.errors import first_line

BEAT = "zipnet.beat"  # the trial system attribute a beat rewrites where the storage has no heartbeat of its own


def attribute_beat(set_system_attr: Callable[[int, str, object], None]) -> Callable[[int], None]:
    """A beat through any storage's `set_trial_system_attr`: the trial's `zipnet.beat`, set to a new value."""

    def record(trial_id: int) -> None:
        set_system_attr(trial_id, BEAT, time.time())  # only its change is read, never the time

    return record


class Silence:
    """Which running trials have stopped beating (the `zipnet.beat` attribute): those whose
    attribute stayed the same for `grace` seconds of this process's clock. A trial that never
    beat (its worker died right after asking it) is silent from when it was first seen."""

    def __init__(self, grace: float):
        self.grace = grace
        self.seen: dict[int, tuple[object, float]] = {}  # trial number -> (its beat, when this value was first seen)

    def forget(self) -> None:
        """After an outage: each trial is silent again only from when this worker next sees it, so
        a worker that reconnected later than this one has a whole grace period to beat."""
        self.seen = {}

    def silent(self, running) -> list:
        """The trials of `running` (other workers' RUNNING trials) silent for the grace period."""
        now, seen, out = time.monotonic(), {}, []
        for t in running:
            beat = t.system_attrs.get(BEAT)
            last = self.seen.get(t.number)
            seen[t.number] = last if last is not None and last[0] == beat else (beat, now)
            if now - seen[t.number][1] >= self.grace:
                out.append(t)
        self.seen = seen  # trials that ended are forgotten
        return out


class Heartbeat:
    """Beats with `record(trial_id)`: Optuna's `storage.record_heartbeat`, or an `attribute_beat`."""

    def __init__(
        self,
        record: Callable[[int], None],
        interval: float,
        log: Callable[[str], None],
        on_beat: Callable[[], None] | None = None,
    ):
        self.record, self.interval, self.log, self.on_beat = record, interval, log, on_beat
        self.covered: dict[int, int] = {}  # trial number -> trial id
        self.failing_since: float | None = None  # when the first beat of the current outage failed
        self._guard = threading.Lock()
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def cover(self, number: int, trial_id: int, beat: bool = True) -> None:
        """Beat for the trial now (unless its first beat was written with it) and every interval until
        it is released."""
        if beat:
            self.record(trial_id)
        with self._guard:
            self.covered[number] = trial_id
            if self._thread is None:
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._loop, args=(self._stop,), name="zipnet-heartbeat", daemon=True
                )
                self._thread.start()

    def release(self, number: int) -> None:
        """The trial has ended (told, given back, or failed): no more beats for it."""
        with self._guard:
            self.covered.pop(number, None)
            last = not self.covered
        if last:
            self.close()

    def _loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            with self._guard:
                ids = list(self.covered.values())
            try:
                for trial_id in ids:
                    self.record(trial_id)
                if self.on_beat is not None:
                    self.on_beat()
            except Exception as err:
                self._failed(err)
            else:
                self._answered()

    def _failed(self, err: BaseException) -> None:
        while err.__cause__ is not None:  # Optuna wraps the driver's error in a generic one
            err = err.__cause__
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            self.log(
                f"heartbeat: the storage did not take a beat ({first_line(err)}); beating again every "
                f"{self.interval} s; no other worker's trial is judged stale until the storage has answered "
                "this worker for a whole grace period"
            )

    def _answered(self) -> None:
        if self.failing_since is not None:
            self.log(f"heartbeat: the storage answers again after {time.monotonic() - self.failing_since:.0f} s")
            self.failing_since = None

    def close(self) -> None:
        """Stop the thread (called from it, or with no trial left, it just ends)."""
        with self._guard:
            stop, thread = self._stop, self._thread
            self._stop = self._thread = None
        if stop is None:
            return
        stop.set()
        if thread is not threading.current_thread():
            thread.join()
