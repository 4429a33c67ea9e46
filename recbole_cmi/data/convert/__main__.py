"""``python -m recbole_cmi convert <source> --input DIR --output dataset/<name> [--kcore 5] ...``.

The options every source takes (``--input``, ``--output``, ``--name``, ``--overwrite``, ``--kcore``) are
added here once; a source adds its own (``add_arguments``), and each option's ``dest`` is a keyword of
the source's ``convert``, which is called with them all. A usage error, a missing or unreadable input
and a bad row all end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from recbole_cmi.cli import OneLineArgumentParser, run_cli
from recbole_cmi.data.convert import SOURCES

PROG = "python -m recbole_cmi convert"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog=PROG,
        description="Convert a public micro-video log to RecBole atomic files (<output>/<name>.inter, .item). "
        f"Options of a source: {PROG} <source> --help.",
    )
    sources = parser.add_subparsers(dest="source", required=True, metavar="source", parser_class=OneLineArgumentParser)
    for source in SOURCES:
        module = importlib.import_module(f"recbole_cmi.data.convert.{source}")
        sub = sources.add_parser(
            source,
            help=module.DESCRIPTION,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument(
            "--input", dest="input_dir", metavar="DIR", required=True, help="folder holding the source files"
        )
        sub.add_argument("--output", metavar="DIR", required=True, help="output folder, e.g. dataset/" + source)
        sub.add_argument("--name", default=None, help="file stem (default: the output folder's name); a plain name")
        sub.add_argument(
            "--overwrite",
            action="store_true",
            help="write into an --output folder that holds files this converter did not write (never deletes them)",
        )
        sub.add_argument(
            "--kcore", type=int, default=5, help="keep users and items with >= k interactions (0 or 1: no filter)"
        )
        module.add_arguments(sub.add_argument_group(f"{source} options"))
        sub.set_defaults(convert=module.convert)
    return parser


def main(argv=None) -> int:
    args = vars(build_parser().parse_args(sys.argv[1:] if argv is None else argv))
    del args["source"]
    convert = args.pop("convert")

    def action():
        start = time.perf_counter()
        print(convert(**args).report())
        print(f"took {time.perf_counter() - start:.1f} s")

    return run_cli(action)


if __name__ == "__main__":
    sys.exit(main())
