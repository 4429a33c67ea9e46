"""Progress where work is long, shown only where a person watches: when stderr is a terminal.

:func:`on_terminal` is the one test. The config's ``show_progress`` default (RecBole's progress bars in training
and evaluation) follows it, and so do the converters' :func:`step` lines; logs, CI, tests and Ray trials, whose
stderr is not a terminal, get neither, so their output stays as it is.
"""

from __future__ import annotations

import contextlib
import sys
import time


def on_terminal() -> bool:
    """Whether stderr is a terminal, which turns progress output on."""
    return sys.stderr.isatty()


@contextlib.contextmanager
def step(label: str):
    """``<label> ... 12.3 s`` on stderr around a long step when :func:`on_terminal`; nothing otherwise.

    The label is printed when the step starts and the seconds when it ends, so a slow step shows what it is doing;
    a step that fails ends its line, leaving the error its own line.
    """
    if not on_terminal():
        yield
        return
    print(f"{label} ...", end="", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        print(file=sys.stderr, flush=True)
        raise
    print(f" {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
