"""The front door: ``python -m recbole_cmi <verb> [options]``, installed as the ``recbole-cmi`` command.

Every verb takes ``--help``. The verbs that train or evaluate share one vocabulary (:mod:`recbole_cmi.cli`):
``--model``, ``--dataset``, ``--config_files="a.yaml b.yaml"`` and any config key as ``--key=value``; a model with
settings is ``Model:key=value,key=value`` (optional ``label=``). Errors end with one line on stderr (exit 2 for a
user error); set RECBOLE_CMI_TRACEBACK=1 to see full tracebacks.

The argument parsing of ``run``, ``tune``, ``inspect``, ``recommend`` and ``robustness`` lives here; the other
verbs are the ``main(argv)`` of the module that does the work, imported only when named. ``run_recbole_cmi.py``
and ``run_hyper.py`` are shims for ``run`` and ``tune``.
"""

from __future__ import annotations

import importlib
import os
import sys

from recbole_cmi.cli import (
    TRUST_HELP,
    OneLineArgumentParser,
    check_config_files,
    config_file_names,
    parse_with_config_values,
    run_cli,
)
from recbole_cmi.errors import ConfigValueError

PROG = "python -m recbole_cmi"


# ------------------------------------------------------------------------------------ run
_BOOLEANS = {"true": True, "false": False}  # as config booleans: "yes", "no", 0 and 1 are refused
RUN_HELP = """\
Train and test a model (RecBole's run_recbole): recbole-cmi run --model=CMI --dataset=micro_video.

``--resume`` continues an interrupted or finished run up to ``--epochs`` (the total): pass the best-model file the
run printed (its ``-last.pth`` sibling, written after every validation, is used when newer) or the ``-last.pth``
file itself. With the same settings and seed the resumed run ends with the same model and metrics as an
uninterrupted one. ``--trust_checkpoint`` lets ``--resume`` read a checkpoint that pickles Python objects
(RecBole's, or ours before 0.2); unpickling runs any code a crafted file holds, so use it for files you trust only.

Several processes (DDP; gloo on CPU, nccl on GPUs; see recbole_cmi/distributed.py), as RecBole's run_recbole:
``--nproc=2`` on one machine; on several, the same ``--world_size`` (all processes), ``--ip``/``--port`` of rank
0's machine and ``--group_offset`` (processes on the machines before this one) on each. Under ``torchrun``
(``torchrun [...] -m recbole_cmi run --model=CMI ...``) torchrun sets the processes and the rendezvous.
"""


def run(argv=None) -> int:
    parser = OneLineArgumentParser(prog=f"{PROG} run", description=RUN_HELP, allow_abbrev=False)
    parser.add_argument("--model", "-m", default=None, help="model name (or set model in a config file)")
    parser.add_argument("--dataset", "-d", default=None, help="dataset name (or set dataset in a config file)")
    parser.add_argument("--config_files", nargs="*", default=None, help="yaml files, later ones win")
    parser.add_argument(
        "--resume", default=None, help="checkpoint to continue training from (saved/<file>.pth or its -last.pth)"
    )
    parser.add_argument("--saved", default="True", help="save and reload the best checkpoint (True/False)")
    parser.add_argument("--trust_checkpoint", action="store_true", help=TRUST_HELP)
    launch = parser.add_argument_group("several processes (DDP)")
    launch.add_argument("--nproc", type=int, default=1, help="processes on this machine (default 1)")
    launch.add_argument("--world_size", type=int, default=-1, help="processes in all (default: nproc)")
    launch.add_argument("--ip", default="127.0.0.1", help="address of rank 0's machine")
    launch.add_argument("--port", type=int, default=None, help="rendezvous port (default: a free one)")
    launch.add_argument("--group_offset", type=int, default=0, help="global rank of this machine's first process")
    args, config_dict = parse_with_config_values(parser, argv)
    if args.saved.lower() not in _BOOLEANS:
        parser.error(f"--saved must be True or False, got {args.saved!r}")
    from recbole_cmi.distributed import torchrun_settings

    given = [a.split("=")[0] for a in (sys.argv[1:] if argv is None else argv) if a.split("=")[0] in LAUNCH_OPTIONS]
    if torchrun_settings() is not None and given:
        parser.error(f"{', '.join(given)}: under torchrun, torchrun sets the processes and the rendezvous")
    code = run_cli(lambda: _run(args, _BOOLEANS[args.saved.lower()], config_dict))
    if torchrun_settings() is not None:
        from recbole_cmi.distributed import end_ddp_process

        end_ddp_process(code)
    return code


LAUNCH_OPTIONS = ("--nproc", "--world_size", "--ip", "--port", "--group_offset")


def _run(args, saved: bool, config_dict: dict) -> int:
    from recbole_cmi import quick_start
    from recbole_cmi.distributed import torchrun_settings
    from recbole_cmi.trainer_checkpoint import last_checkpoint_path

    config_files = check_config_files(config_file_names(args.config_files)) or None
    if torchrun_settings() is not None:
        result = quick_start.run_torchrun_process(args.model, args.dataset, config_files, config_dict)
    elif args.nproc == 1 and args.world_size <= 0:
        result = quick_start.run_recbole_cmi(
            args.model,
            args.dataset,
            config_files,
            config_dict,
            saved=saved,
            resume=args.resume,
            trust_checkpoint=args.trust_checkpoint,
        )
    else:
        if args.trust_checkpoint:
            raise ConfigValueError("--trust_checkpoint is for one process: upgrade the checkpoint first")
        result = quick_start.run_distributed(
            args.model,
            args.dataset,
            config_files,
            config_dict,
            nproc=args.nproc,
            world_size=args.world_size,
            ip=args.ip,
            port=args.port,
            group_offset=args.group_offset,
            saved=saved,
            resume=args.resume,
        )
    if result is None:  # a DDP process other than global rank 0
        return 0
    print(f"best valid: {_plain(result['best_valid_result'])}")
    print(f"test result: {_plain(result['test_result'])}")
    if result["saved_model_file"]:
        print(f"checkpoint: {result['saved_model_file']}")
        last = last_checkpoint_path(result["saved_model_file"])
        if os.path.isfile(last):
            print(f"last checkpoint: {last}")
    return 0


def _plain(result):
    return {key: float(value) for key, value in (result or {}).items()}


# ------------------------------------------------------------------------------------ tune
TUNE_HELP = """\
Search hyper-parameters with Ray Tune (RecBole's run_hyper): recbole-cmi tune --model=CMI --dataset=micro_video
--params_file=properties/hyper/CMI.hyper.

``--num_samples=N`` (default 10; with ``--search=grid``, how often the grid is run; a random search over ``choice``
lines only tries N different points, at most all of them). ``--gpus_per_trial`` allows fractions (default 1 when
the cluster has GPUs, else 0); ``--address=auto|HOST:PORT`` joins an existing Ray cluster (default: a local Ray);
``--resume`` continues the search in ``--output``, or the latest one for the model and dataset. Any other
``--<key>=<value>`` is a fixed config value of every trial. See ``recbole_cmi/tune/search.py`` for how trials run
and how to use a cluster.
"""


def tune(argv=None) -> int:
    parser = OneLineArgumentParser(prog=f"{PROG} tune", description=TUNE_HELP, allow_abbrev=False)
    parser.add_argument("--model", "-m", default=None)
    parser.add_argument("--dataset", "-d", default=None)
    parser.add_argument("--params_file", default=None, help="RecBole .hyper file, one parameter per line")
    parser.add_argument("--config_files", nargs="*", default=None, help="yaml files, later ones win")
    parser.add_argument("--num_samples", type=int, default=None)
    parser.add_argument("--search", default="random", help="random, grid, hyperopt or optuna")
    parser.add_argument("--scheduler", default="asha", help="asha (stops bad trials early) or fifo")
    parser.add_argument("--max_concurrent", type=int, default=None)
    parser.add_argument("--cpus_per_trial", type=float, default=1.0)
    parser.add_argument("--gpus_per_trial", type=float, default=None)
    parser.add_argument("--address", default=None, help="Ray cluster address: auto or HOST:PORT")
    parser.add_argument("--num_cpus", type=int, default=None, help="CPUs of the local Ray instance")
    parser.add_argument("--output", default=None, help="default ray_results/<model>-<dataset>-<time>")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--search_seed", type=int, default=2022)
    parser.add_argument("--grace_period", type=int, default=1, help="ASHA: epochs before a trial can stop")
    parser.add_argument("--reduction_factor", type=float, default=2.0, help="ASHA reduction factor")
    parser.add_argument("--verbose", type=int, default=1, help="Ray Tune's verbosity, 0..3")
    args, config_dict = parse_with_config_values(parser, argv)
    return run_cli(lambda: _tune(args, config_dict))


def _tune(args, config_dict: dict) -> int:
    from recbole_cmi.tune import SearchSettings, run_search

    options = {key: value for key, value in vars(args).items() if key != "config_files"}
    settings = SearchSettings(
        config_files=check_config_files(config_file_names(args.config_files)), config_dict=config_dict, **options
    )
    outcome = run_search(settings)
    print(f"trials: {outcome.files['trials_md']}")
    if outcome.unfinished:
        print(f"{outcome.unfinished} trials unfinished; continue with --resume --output={outcome.output_dir}")
        return 130
    best = outcome.best
    print(f"best trial {best.trial_id}: valid {outcome.metric} = {best.score} (epoch {best.best_epoch}), {best.params}")
    print(f"test result: {outcome.test_result}")
    print(f"best config: {outcome.files['best_config']}")
    print(f"checkpoint: {best.saved_model_file}")
    return 0


# ------------------------------------------------------------------------------------ inspect
INSPECT_HELP = """\
Inspect CMI's implicit categories: recbole-cmi inspect --checkpoint saved/CMI-<time>.pth --out reports/x.

Writes PNGs and report.md: category usage, typical items, recovery of planted item categories (NMI/ARI, confusion
matrix; optionally against k-means of a baseline's item embeddings), a 2-D PCA of the item vectors and a few
sample users' interests (recbole_cmi/tools/inspect.py).
"""


def inspect(argv=None) -> int:
    parser = OneLineArgumentParser(prog=f"{PROG} inspect", description=INSPECT_HELP)
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
    return run_cli(lambda: _inspect(args))


def _inspect(args) -> int:
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


# ------------------------------------------------------------------------------------ recommend
RECOMMEND_HELP = """\
Top-K items for one user: recbole-cmi recommend --checkpoint saved/<file>.pth --user <id>.

The user is given by the dataset's original id. The model sees the user's whole history (its last
MAX_ITEM_LIST_LENGTH items) and every item the user interacted with is excluded. Multi-interest models (CMI,
ComiRecSA/DR) also print the interest each item came from. ``--retrieval faiss`` takes each interest's top items
from a faiss index (the checkpoint's ``faiss_*`` settings, ``--faiss-index`` to change the index) instead of
scoring every item; it needs ``pip install 'recbole_cmi[retrieval]'``.
"""


def recommend(argv=None) -> int:
    parser = OneLineArgumentParser(prog=f"{PROG} recommend", description=RECOMMEND_HELP)
    parser.add_argument(
        "--checkpoint", required=True, help="a checkpoint written by our runs (saved/<Model>-<time>.pth)"
    )
    parser.add_argument("--user", required=True, help="the user's original id, as in the .inter file")
    parser.add_argument("--topk", type=int, default=20, help="number of items (default 20)")
    parser.add_argument("--trust_checkpoint", action="store_true", help=TRUST_HELP)
    parser.add_argument(
        "--retrieval",
        choices=("exact", "faiss"),
        default=None,
        help="exact: score every item; faiss: per-interest search in a faiss index (default: the checkpoint's "
        "retrieval setting, else exact)",
    )
    parser.add_argument(
        "--faiss-index", choices=("flat", "ivf", "hnsw"), default=None, help="faiss index (default: the checkpoint's)"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.topk < 1:
        parser.error(f"--topk must be >= 1, got {args.topk}")
    return run_cli(lambda: _recommend(args))


def _recommend(args) -> int:
    from recbole_cmi.retrieval import RetrievalSettings, import_faiss
    from recbole_cmi.tools.common import load
    from recbole_cmi.tools.recommend import format_recommendation
    from recbole_cmi.tools.recommend import recommend as top_items

    if args.retrieval == "faiss":
        import_faiss()  # before the checkpoint's dataset is loaded: fail fast without faiss
    pipeline = load(args.checkpoint, args.trust_checkpoint)
    config, model, dataset = pipeline.config, pipeline.model, pipeline.dataset
    retrieval = RetrievalSettings.from_config(config, mode=args.retrieval, index=args.faiss_index)
    if retrieval.mode == "faiss":
        import_faiss()
    print(format_recommendation(top_items(model, dataset, args.user, args.topk, retrieval), config["model"]))
    return 0


# ------------------------------------------------------------------------------------ robustness
ROBUSTNESS_HELP = """\
Robustness study: recbole-cmi robustness --dataset=micro_video --models=CMI,CMI_noCL,SASRec.

Trains each model once (or loads ``--checkpoints``), then evaluates its best checkpoint on the test set with a
fraction p of every history dropped, or replaced by random items; writes ``<out>/<prefix>.md``, ``.csv`` and
``.png`` (Recall@K vs p). Models: a RecBole or recbole_cmi model, an alias (CMI_noCL = CMI with cl_weight 0,
CMI_noOrth, CMI_noUni, CMI_noGeneral), or a variant ``Model:key=value,key=value,label=Name``. Further
``--key=value`` options are config keys for every model.

Several seeds of a model: give their checkpoints under one label, ``--checkpoints=CMI=s1.pth,CMI=s2.pth,
SASRec=t1.pth,SASRec=t2.pth``. Each run is a row group of the csv (column ``run``); the tables and the plot show
the mean over the runs, ± the sample sd with two or more (column ``runs``). All runs see the same perturbed
histories (``--seed``), and the runs under one label must hold the same model. A trained model is one run.

``--lengths=6,19`` also reports Recall/NDCG on the clean test users by the length of their input history
(buckets 1-6, 7-19, >=20; histories are cut to MAX_ITEM_LIST_LENGTH, so the last bucket is "at least").

``--merge=a/robustness.csv,b/robustness.csv`` publishes earlier studies' runs with this one's (or alone): a
study split over processes or machines, or a model added later. Their csv must record the same ``--seed`` (the
same perturbed histories) and ``--topk``; a label's runs are numbered in the order given.
"""


def robustness(argv=None) -> int:
    parser = OneLineArgumentParser(prog=f"{PROG} robustness", description=ROBUSTNESS_HELP, allow_abbrev=False)
    parser.add_argument("--dataset", "-d", default=None, help="dataset to train on (needed with --models)")
    parser.add_argument("--models", default=None, help="comma-separated: CMI,CMI_noCL,SASRec or Model:key=v,label=L")
    parser.add_argument(
        "--checkpoints",
        default=None,
        help="comma-separated [Label=]checkpoint files to evaluate; a label given again: runs (seeds) of one model",
    )
    parser.add_argument("--p", default="0,0.1,0.2,0.3,0.5", help="fractions to perturb (default 0,0.1,0.2,0.3,0.5)")
    parser.add_argument("--seed", type=int, default=2022, help="seed of the perturbations (default 2022)")
    parser.add_argument("--topk", type=int, default=20, help="cut-off of Recall/NDCG (default 20)")
    parser.add_argument(
        "--lengths", default=None, help="edges of history-length buckets, e.g. 6,19: 1-6, 7-19, >=20 (default: off)"
    )
    parser.add_argument(
        "--merge", default=None, help="comma-separated csv files of earlier studies (same --seed) to publish with this"
    )
    parser.add_argument("--out", default="reports/robustness", help="output folder (default reports/robustness)")
    parser.add_argument("--prefix", default="robustness", help="file names: <prefix>.md/.csv/.png")
    parser.add_argument("--config_files", nargs="*", default=None, help="yaml files for training, later ones win")
    parser.add_argument("--trust_checkpoint", action="store_true", help=TRUST_HELP)
    args, config_dict = parse_with_config_values(parser, argv)
    if not args.models and not args.checkpoints and not args.merge:
        parser.error("give --models (to train), --checkpoints (to evaluate) and/or --merge (earlier studies' csv)")
    if args.models and not args.dataset:
        parser.error("--models needs --dataset")
    if args.topk < 1:
        parser.error(f"--topk must be >= 1, got {args.topk}")
    return run_cli(lambda: _robustness(args, config_dict))


def _robustness(args, config_dict: dict) -> int:
    from recbole_cmi.tools.robustness import parse_checkpoints, parse_fractions, parse_lengths, parse_models, run_study
    from recbole_cmi.tools.robustness_report import read_study_csv

    fractions = parse_fractions(args.p)
    lengths = parse_lengths(args.lengths)
    merged = [
        read_study_csv(path.strip(), args.topk, args.seed) for path in (args.merge or "").split(",") if path.strip()
    ]
    specs = (parse_models(args.models) if args.models else []) + (
        parse_checkpoints(args.checkpoints) if args.checkpoints else []
    )
    rows = run_study(
        specs,
        args.dataset,
        fractions,
        seed=args.seed,
        out=args.out,
        prefix=args.prefix,
        config_files=check_config_files(config_file_names(args.config_files)) or None,
        config_dict=config_dict,
        topk=args.topk,
        trust_checkpoint=args.trust_checkpoint,
        lengths=lengths,
        merged=merged,
    )
    print(f"wrote {os.path.join(args.out, args.prefix)}.md, .csv, .png")
    failed = [r for r in rows if r["error"]]
    for row in failed:
        print(f"error: {row['model']} failed: {row['error']}", file=sys.stderr)
    return 1 if failed else 0


# ------------------------------------------------------------------------------------ the verbs
# verb -> (module, function, one line for --help); a verb's module is imported only when it is named.
VERBS = {
    "run": (__name__, "run", "train and test a model (run_recbole_cmi.py)"),
    "tune": (__name__, "tune", "search hyper-parameters with Ray Tune (run_hyper.py)"),
    "convert": ("recbole_cmi.data.convert.__main__", "main", "convert a public log to RecBole atomic files"),
    "synthetic": ("recbole_cmi.data.synthetic", "main", "generate a synthetic dataset with planted categories"),
    "inspect": (__name__, "inspect", "what CMI's implicit categories learned (report.md and PNGs)"),
    "recommend": (__name__, "recommend", "top-K items for one user from a checkpoint"),
    "robustness": (__name__, "robustness", "metrics under dropped or replaced history items"),
    "export": ("recbole_cmi.export", "main", "item vectors and a faiss index for serving"),
    "checkpoint": ("recbole_cmi.checkpoint", "main", "upgrade an old (pickled) checkpoint to the safe format"),
    "benchmark": ("recbole_cmi.benchmark.__main__", "main", "accuracy, speed, tune, anomaly, gpu or authors-code"),
}


def usage() -> str:
    width = max(map(len, VERBS))
    lines = [f"  {verb:<{width}}  {text}" for verb, (_, _, text) in VERBS.items()]
    return "\n".join(
        [f"usage: {PROG} <verb> [options]   (or: recbole-cmi <verb>; <verb> --help for its options)", "", "verbs:"]
        + lines
    )


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"error: unknown verb '{verb}' (choose from {', '.join(VERBS)}; see --help)", file=sys.stderr)
        return 2
    module, function, _ = VERBS[verb]
    return int(getattr(importlib.import_module(module), function)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
