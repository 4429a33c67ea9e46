"""Robustness study: ``python -m recbole_cmi.robustness --dataset=micro_video --models=CMI,CMI_noCL,SASRec``.

Trains each model once (or loads ``--checkpoints``), then evaluates its best checkpoint on the
test set with a fraction p of every history dropped, or replaced by random items; writes
``<out>/<prefix>.md``, ``.csv`` and ``.png`` (Recall@K vs p). Models: a RecBole or recbole_cmi
model, an alias (CMI_noCL = CMI with cl_weight 0, CMI_noOrth, CMI_noUni, CMI_noGeneral), or
``Label:key=value;key=value``. Further ``--key=value`` options are config keys for every model.
"""

from __future__ import annotations

import os
import sys


def main(argv=None) -> int:
    from recbole_cmi.cli import TRUST_HELP, OneLineArgumentParser, run_cli

    parser = OneLineArgumentParser(
        prog="python -m recbole_cmi.robustness", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    parser.add_argument("--dataset", "-d", default=None, help="dataset to train on (needed with --models)")
    parser.add_argument("--models", default=None, help="comma-separated: CMI,CMI_noCL,SASRec or Label:key=v;key=v")
    parser.add_argument("--checkpoints", default=None, help="comma-separated [Label=]checkpoint files to evaluate")
    parser.add_argument("--p", default="0,0.1,0.2,0.3,0.5", help="fractions to perturb (default 0,0.1,0.2,0.3,0.5)")
    parser.add_argument("--seed", type=int, default=2022, help="seed of the perturbations (default 2022)")
    parser.add_argument("--topk", type=int, default=20, help="cut-off of Recall/NDCG (default 20)")
    parser.add_argument("--out", default="reports/robustness", help="output folder (default reports/robustness)")
    parser.add_argument("--prefix", default="robustness", help="file names: <prefix>.md/.csv/.png")
    parser.add_argument("--config_files", nargs="*", default=None, help="yaml files for training, later ones win")
    parser.add_argument("--trust_checkpoint", action="store_true", help=TRUST_HELP)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    unknown = [a for a in rest if not (a.startswith("--") and "=" in a)]
    if unknown:
        parser.error(f"unrecognised arguments {' '.join(unknown)}: config keys are given as --key=value")
    if not args.models and not args.checkpoints:
        parser.error("give --models (to train) and/or --checkpoints (to evaluate)")
    if args.models and not args.dataset:
        parser.error("--models needs --dataset")
    if args.topk < 1:
        parser.error(f"--topk must be >= 1, got {args.topk}")
    return run_cli(lambda: _run(args, rest))


def _run(args, rest) -> int:
    from recbole_cmi.tools.common import parse_value
    from recbole_cmi.tools.robustness import parse_checkpoints, parse_fractions, parse_models, run_study

    fractions = parse_fractions(args.p)
    specs = (parse_models(args.models) if args.models else []) + (
        parse_checkpoints(args.checkpoints) if args.checkpoints else []
    )
    config_files = [f for group in (args.config_files or []) for f in group.split()] or None
    config_dict = {key[2:]: parse_value(value) for key, _, value in (a.partition("=") for a in rest)}
    rows = run_study(
        specs,
        args.dataset,
        fractions,
        seed=args.seed,
        out=args.out,
        prefix=args.prefix,
        config_files=config_files,
        config_dict=config_dict,
        topk=args.topk,
        trust_checkpoint=args.trust_checkpoint,
    )
    print(f"wrote {os.path.join(args.out, args.prefix)}.md, .csv, .png")
    failed = [r for r in rows if r["error"]]
    for row in failed:
        print(f"error: {row['model']} failed: {row['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
