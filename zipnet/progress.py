"""A progress bar over passes (tqdm), drawn on a terminal only.

    bar = PassBar(passes)            # enabled=None: only when the stream is a terminal
    bar.write("pass 1\\neval: ...")   # a line printed above the bar, never into it
    bar.update(1)                    # passes done; the bar closes itself at the last one

Print every line through `bar.write` while a bar is shown: tqdm clears the bar, prints the
line at column 0 and draws the bar again below it.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


class PassBar:
    def __init__(self, passes: int, enabled: bool | None = None, stream=None):
        stream = stream or sys.stderr
        self.enabled = stream.isatty() if enabled is None else enabled
        self.bar = tqdm(
            total=passes,
            desc="pass",
            unit="pass",
            file=stream,
            disable=not self.enabled,
            leave=False,
            dynamic_ncols=True,
            mininterval=0,
            miniters=1,
        )

    def write(self, text: str) -> None:
        """Print `text` on stdout, above the bar when one is shown."""
        if self.enabled:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def update(self, done: int) -> None:
        """`done` passes are finished (a total, not an increment)."""
        if not self.bar.disable:  # disabled: off a terminal, or closed
            self.bar.update(done - self.bar.n)
            if done >= self.bar.total:
                self.close()

    def close(self) -> None:
        self.bar.close()
