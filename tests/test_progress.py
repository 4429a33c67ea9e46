"""recbole_cmi.progress: progress output only where stderr is a terminal, one mechanism for all of it."""

from __future__ import annotations

import io
import sys

import pytest

from recbole_cmi import progress


class Terminal(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [True, False])
def test_on_terminal_is_whether_stderr_is_a_terminal(tty, monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal(tty))
    assert progress.on_terminal() is tty


def test_a_step_prints_its_label_then_its_seconds_on_a_terminal(monkeypatch):
    stderr = Terminal(True)
    monkeypatch.setattr(sys, "stderr", stderr)
    clock = iter([10.0, 12.34])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    with progress.step("reading big_matrix.csv"):
        assert stderr.getvalue() == "reading big_matrix.csv ..."  # shown while the step runs
    assert stderr.getvalue() == "reading big_matrix.csv ... 2.3 s\n"


def test_a_failing_step_ends_its_line_and_a_step_off_a_terminal_prints_nothing(monkeypatch):
    stderr = Terminal(True)
    monkeypatch.setattr(sys, "stderr", stderr)
    with pytest.raises(ValueError, match="bad cell"), progress.step("reading x.csv"):
        raise ValueError("bad cell")
    assert stderr.getvalue() == "reading x.csv ...\n"

    stderr = Terminal(False)
    monkeypatch.setattr(sys, "stderr", stderr)
    with progress.step("reading x.csv"):
        pass
    assert stderr.getvalue() == ""
