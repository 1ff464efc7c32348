"""The pass bar: silent off a terminal; on one, every per-pass line lands at column 0 of its own
row, as a terminal shows it (a pseudo-terminal records the bytes, `screen` replays them)."""

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios

from zipnet.progress import PassBar

COLS = 100
CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")
PASS_LINE = re.compile(r"pass \d+\b(?!/)")  # `pass 3`, not a bar's `pass 1/3`


def run_on_a_terminal(args: list[str], cwd) -> tuple[int, str]:
    """Run `args` with stdin, stdout and stderr on one pseudo-terminal COLS wide: (exit code, every byte it shows)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, COLS, 0, 0))
    proc = subprocess.Popen(args, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: the child closed the terminal (exited)
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(timeout=300), b"".join(chunks).decode("utf-8", "replace")


def screen(raw: str, cols: int = COLS) -> list[str]:
    """What a terminal shows after `raw`: CR returns to column 0, LF moves down (the terminal
    turns the program's \\n into \\r\\n), text overwrites in place and wraps at `cols`, and the
    cursor and erase sequences tqdm uses are applied."""
    rows, r, c, i = [[]], 0, 0, 0
    while i < len(raw):
        ch = raw[i]
        if m := CSI.match(raw, i):
            n = int(m[1]) if m[1].isdigit() else None
            if m[2] == "A":
                r = max(r - (n or 1), 0)
            elif m[2] == "B":
                r += n or 1
            elif m[2] == "K":  # erase: 0 to the end of the row, 1 to the cursor, 2 the whole row
                while len(rows) <= r:
                    rows.append([])
                row = rows[r]
                if not n:
                    del row[c:]
                elif n == 1:
                    row[: c + 1] = " " * min(len(row), c + 1)
                else:
                    row.clear()
            i = m.end()
            continue
        if ch == "\r":
            c = 0
        elif ch == "\n":
            r += 1
        elif ch == "\b":
            c = max(c - 1, 0)
        elif ch >= " ":
            if c >= cols:
                r, c = r + 1, 0
            while len(rows) <= r:
                rows.append([])
            row = rows[r]
            row.extend(" " * (c + 1 - len(row)))
            row[c] = ch
            c += 1
        i += 1
    return ["".join(row).rstrip() for row in rows]


def check_lines(raw: str, passes: int) -> None:
    """The bar was drawn, and every `pass N` and `eval:` line starts a row of its own."""
    assert "\r" in raw and f"{passes}/{passes}" in raw, "no bar was drawn"
    rows = screen(raw)
    for row in rows:
        if "eval:" in row or PASS_LINE.search(row):
            assert row.startswith(("eval:", "pass ")) and not PASS_LINE.search(row, 1), f"collided: {row!r}"
    assert [row for row in rows if PASS_LINE.match(row)] == [f"pass {p}" for p in range(1, passes + 1)]
    assert sum(row.startswith("eval: split train.") for row in rows) == passes
    assert sum(row.startswith("eval: split test .") for row in rows) == passes


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_bar_is_silent_when_output_is_not_a_terminal(capsys):
    out = io.StringIO()
    bar = PassBar(3, stream=out)
    for p in (1, 2, 3):
        bar.write(f"pass {p}")
        bar.update(p)
    assert out.getvalue() == ""
    assert capsys.readouterr().out == "pass 1\npass 2\npass 3\n"  # the lines still print, plainly


def test_bar_draws_on_a_terminal_and_closes_itself_at_the_last_pass():
    out = _Tty()
    bar = PassBar(4, stream=out)
    bar.update(2)
    assert "2/4" in out.getvalue()
    bar.update(4)
    assert bar.bar.disable  # closed: a later line cannot meet it
    bar.update(4)
    bar.close()  # twice is harmless


def test_bar_write_keeps_lines_apart_from_the_bar_on_a_terminal(tmp_path):
    script = (
        "from zipnet.progress import PassBar\n"
        "bar = PassBar(3)\n"
        "for p in (1, 2, 3):\n"
        "    bar.write(f'pass {p}\\neval: split train. loss 1.00e-02. error 1.00%. misses: 2\\n'\n"
        "              f'eval: split test . loss 2.00e-02. error 2.00%. misses: 4')\n"
        "    bar.update(p)\n"
        "print('done')\n"
    )
    code, raw = run_on_a_terminal([sys.executable, "-c", script], tmp_path)
    assert code == 0, raw
    check_lines(raw, 3)
    assert screen(raw)[-1] == "done"  # the finished bar is gone, not left on the last row


def test_cli_lines_start_at_column_0_with_a_bar_on_a_terminal(tmp_path):
    """zipnet-train on a pseudo-terminal with the bar on: nothing is drawn into a per-pass line."""
    code, raw = run_on_a_terminal(
        [
            sys.executable,
            "-m",
            "zipnet.cli.train",
            "data.n_train=200",
            "data.n_test=100",
            "trainer.passes=3",
            "tracking.enabled=false",
            "trainer.progress=on",
        ],
        tmp_path,
    )
    assert code == 0, raw
    check_lines(raw, 3)
