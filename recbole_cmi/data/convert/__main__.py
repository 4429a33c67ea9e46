"""``python -m recbole_cmi.data.convert <source> --input DIR --output dataset/<name> [--kcore 5] ...``."""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from recbole_cmi.cli import run_cli
from recbole_cmi.data.convert import SOURCES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_cmi convert",
        description="Convert a public micro-video log to RecBole atomic files (<output>/<name>.inter, .item).",
    )
    sources = parser.add_subparsers(dest="source", required=True, metavar="source")
    for source in SOURCES:
        module = importlib.import_module(f"recbole_cmi.data.convert.{source}")
        sub = sources.add_parser(
            source,
            help=module.DESCRIPTION,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("--input", required=True, help="folder holding the source files")
        sub.add_argument("--output", required=True, help="output folder, e.g. dataset/" + source)
        sub.add_argument("--name", default=None, help="file stem (default: the output folder's name); a plain name")
        sub.add_argument(
            "--overwrite",
            action="store_true",
            help="write into an --output folder that holds files this converter did not write (never deletes them)",
        )
        sub.add_argument(
            "--kcore", type=int, default=5, help="keep users and items with >= k interactions (0 or 1: no filter)"
        )
        module.add_arguments(sub)
        sub.set_defaults(convert=module.from_args)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def action():
        start = time.perf_counter()
        result = args.convert(args)
        print(result.report())
        print(f"took {time.perf_counter() - start:.1f} s")

    return run_cli(action)


if __name__ == "__main__":
    sys.exit(main())
