"""A progress bar over passes, drawn on a terminal only; silent when output is not a TTY."""

from __future__ import annotations

import sys
import time


class PassBar:
    def __init__(self, passes: int, enabled: bool | None = None, stream=None, width: int = 30):
        self.stream = stream or sys.stderr
        self.passes = passes
        self.width = width
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.started = time.perf_counter()
        self._done = 0
        if self.enabled:
            self.update(0)

    def update(self, done: int) -> None:
        self._done = done
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.started
        left = elapsed / done * (self.passes - done) if done else 0.0
        filled = self.width * done // max(self.passes, 1)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] pass {done}/{self.passes} {elapsed:5.0f}s elapsed, ~{left:.0f}s left")
        if done >= self.passes:
            self.stream.write("\n")
        self.stream.flush()

    def write(self, text: str) -> None:
        """A line that does not collide with the bar."""
        if self.enabled:
            self.stream.write("\r\033[K")
        print(text, flush=True)
        if self.enabled:
            self.update(self._done)

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
