"""``python -m recbole_cmi benchmark <subcommand> [options]``: reproducible head-to-head benchmarks.

``python -m recbole_cmi.benchmark <subcommand>`` runs the same.

Subcommands (each a module with ``main(argv) -> int``, imported only when named):

* ``accuracy``: every model x seed under one shared config; a results table per dataset and protocol.
* ``gpu``: one epoch per model on MicroLens-sized synthetic data on CUDA, AMP on/off, CPU/CUDA agreement.
* ``speed``: training throughput, full-sort evaluation speed and peak memory per model at several data sizes.
* ``tune``: the same validation search (trials, ASHA, epoch cap) for every model; writes their tuned files.
* ``anomaly``: what autograd anomaly mode (which RecBole switches on) costs per training epoch.
* ``authors-code``: a RecBole ``.inter`` file as the CMI authors' input, split as our leave-one-out.
"""

from __future__ import annotations

import importlib
import sys

# name -> module; a new subcommand is one line here.
SUBCOMMANDS = {
    "accuracy": "recbole_cmi.benchmark.accuracy",
    "gpu": "recbole_cmi.benchmark.gpu",
    "speed": "recbole_cmi.benchmark.speed",
    "tune": "recbole_cmi.benchmark.tune",
    "anomaly": "recbole_cmi.benchmark.anomaly",
    "authors-code": "recbole_cmi.benchmark.authors_code",
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = ", ".join(SUBCOMMANDS)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m recbole_cmi benchmark {{{names}}} [options]  (<subcommand> --help for its options)")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown benchmark '{name}' (choose from {names})", file=sys.stderr)
        return 2
    return int(importlib.import_module(SUBCOMMANDS[name]).main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
