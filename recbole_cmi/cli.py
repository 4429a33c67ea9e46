"""One error line instead of a traceback for every command-line tool of ours."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from recbole_cmi.errors import RecboleCmiError

# Warnings RecBole 1.2.1 triggers on every run with current pandas/torch (chained-assignment
# fillna, torch.cuda.amp.GradScaler); harmless, and they would bury the one-line messages.
_RECBOLE_MODULES = r"recbole(\.|$)"


TRUST_HELP = (
    "also load a checkpoint that pickles Python objects (RecBole's, or recbole_cmi's before 0.2): unpickling runs "
    "any code a crafted file holds, so use it only for files you trust (python -m recbole_cmi.checkpoint upgrade "
    "converts one for good)"
)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2), like our other errors."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def quiet_recbole_warnings() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning, module=_RECBOLE_MODULES)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=_RECBOLE_MODULES)


def run_cli(action) -> int:
    """Run ``action()``; report a user error (or any other failure) as one line on stderr."""
    if not os.environ.get("RECBOLE_CMI_TRACEBACK"):
        quiet_recbole_warnings()
    try:
        return int(action() or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RecboleCmiError as err:
        if os.environ.get("RECBOLE_CMI_TRACEBACK"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # RecBole or torch failed on input we did not anticipate
        if os.environ.get("RECBOLE_CMI_TRACEBACK"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(
            f"error: {type(err).__name__}: {message} (set RECBOLE_CMI_TRACEBACK=1 for the full traceback)",
            file=sys.stderr,
        )
        return 1
