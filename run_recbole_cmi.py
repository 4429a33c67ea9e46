"""Train and test a model: ``python run_recbole_cmi.py --model=CMI --dataset=micro_video``.

Options in RecBole's style: ``--model``, ``--dataset``, ``--config_files="a.yaml b.yaml"``
(or several values after ``--config_files``), ``--resume=saved/<file>.pth``, and any config
key as ``--<key>=<value>``. Set RECBOLE_CMI_TRACEBACK=1 to see full tracebacks.

``--trust_checkpoint`` lets ``--resume`` read a checkpoint that pickles Python objects (RecBole's, or
ours before 0.2); unpickling runs any code a crafted file holds, so use it for files you trust only.

``--resume`` continues an interrupted or finished run up to ``--epochs`` (the total): pass the
best-model file the run printed (its ``-last.pth`` sibling, written after every validation, is
used when newer) or the ``-last.pth`` file itself. With the same settings and seed the resumed
run ends with the same model and metrics as an uninterrupted one.
"""

import os
import sys

_BOOLEANS = {"true": True, "false": False}  # as config booleans: "yes", "no", 0 and 1 are refused


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    from recbole_cmi.cli import TRUST_HELP, OneLineArgumentParser, run_cli

    parser = OneLineArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--model", "-m", default=None, help="model name (or set model in a config file)")
    parser.add_argument("--dataset", "-d", default=None, help="dataset name (or set dataset in a config file)")
    parser.add_argument("--config_files", nargs="*", default=None, help="yaml files, later ones win")
    parser.add_argument(
        "--resume", default=None, help="checkpoint to continue training from (saved/<file>.pth or its -last.pth)"
    )
    parser.add_argument("--saved", default="True", help="save and reload the best checkpoint (True/False)")
    parser.add_argument("--trust_checkpoint", action="store_true", help=TRUST_HELP)
    args, rest = parser.parse_known_args(argv)
    config_files = [f for group in (args.config_files or []) for f in group.split()] or None
    unknown = [a for a in rest if not (a.startswith("--") and "=" in a)]
    if unknown:
        parser.error(f"unrecognised arguments {' '.join(unknown)}: config keys are given as --key=value")
    if args.saved.lower() not in _BOOLEANS:
        parser.error(f"--saved must be True or False, got {args.saved!r}")
    saved = _BOOLEANS[args.saved.lower()]

    # RecBole's Config reads the remaining --key=value pairs from sys.argv (highest priority).
    original_argv = sys.argv
    sys.argv = [sys.argv[0] if sys.argv else "run_recbole_cmi.py"] + rest
    try:
        return run_cli(lambda: _run(args.model, args.dataset, config_files, args.resume, saved, args.trust_checkpoint))
    finally:
        sys.argv = original_argv


def _run(model, dataset, config_files, resume, saved, trust_checkpoint=False):
    from recbole_cmi.quick_start import run_recbole_cmi

    result = run_recbole_cmi(
        model, dataset, config_files, saved=saved, read_argv=True, resume=resume, trust_checkpoint=trust_checkpoint
    )
    print(f"best valid: {_plain(result['best_valid_result'])}")
    print(f"test result: {_plain(result['test_result'])}")
    if result["saved_model_file"]:
        from recbole_cmi.trainer import last_checkpoint_path

        print(f"checkpoint: {result['saved_model_file']}")
        last = last_checkpoint_path(result["saved_model_file"])
        if os.path.isfile(last):
            print(f"last checkpoint: {last}")
    return 0


def _plain(result):
    return {key: float(value) for key, value in (result or {}).items()}


if __name__ == "__main__":
    sys.exit(main())
