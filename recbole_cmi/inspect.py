"""Inspect CMI's implicit categories: ``python -m recbole_cmi.inspect --checkpoint saved/CMI-<time>.pth --out reports/x``.

Writes PNGs and report.md: category usage, typical items, recovery of planted item categories
(NMI/ARI, confusion matrix; optionally against k-means of a baseline's item embeddings), a 2-D
PCA of the item vectors and a few sample users' interests.
"""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    from recbole_cmi.cli import TRUST_HELP, OneLineArgumentParser, run_cli

    parser = OneLineArgumentParser(prog="python -m recbole_cmi.inspect", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a CMI checkpoint written by our runs")
    parser.add_argument("--out", required=True, help="output folder for report.md and the PNGs")
    parser.add_argument("--users", type=int, default=3, help="sample users to show (default 3)")
    parser.add_argument("--top", type=int, default=10, help="items listed per category / interest (default 10)")
    parser.add_argument("--baseline_checkpoint", default=None, help="e.g. a SASRec checkpoint: k-means of its items")
    parser.add_argument("--seed", type=int, default=2022, help="seed of the sample users and k-means (default 2022)")
    parser.add_argument("--category_field", default="category", help="item-file column with planted categories")
    parser.add_argument("--trust_checkpoint", action="store_true", help=TRUST_HELP)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.users < 0 or args.top < 1:
        parser.error(f"--users must be >= 0 and --top >= 1, got {args.users} and {args.top}")
    return run_cli(lambda: _run(args))


def _run(args) -> int:
    from recbole_cmi.tools.inspect import inspect_checkpoint

    summary = inspect_checkpoint(
        args.checkpoint,
        args.out,
        users=args.users,
        top=args.top,
        baseline_checkpoint=args.baseline_checkpoint,
        seed=args.seed,
        category_field=args.category_field,
        trust_checkpoint=args.trust_checkpoint,
    )
    print(f"wrote {args.out}/report.md")
    for name, scores in summary.get("recovery", {}).items():
        print(f"{name}: NMI {scores['nmi']:.3f}, ARI {scores['ari']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
