import io

from zipnet.progress import PassBar


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_bar_is_silent_when_output_is_not_a_terminal():
    out = io.StringIO()
    bar = PassBar(3, stream=out)
    for p in (1, 2, 3):
        bar.update(p)
    assert out.getvalue() == ""


def test_bar_draws_on_a_terminal():
    out = _Tty()
    bar = PassBar(4, stream=out, width=8)
    bar.update(2)
    assert "[####----] pass 2/4" in out.getvalue()
    bar.update(4)
    assert out.getvalue().endswith("\n") and "pass 4/4" in out.getvalue()
