"""Search hyper-parameters with Ray Tune: ``python run_hyper.py --model=CMI --dataset=micro_video
--params_file=properties/hyper/CMI.hyper``.

Options: ``--num_samples=N`` (default 10; with ``--search=grid``, how often the grid is run; a random
search over ``choice`` lines only tries N different points, at most all of them),
``--search=random|grid|hyperopt|optuna``, ``--scheduler=asha|fifo``, ``--max_concurrent=K``,
``--cpus_per_trial=C``, ``--gpus_per_trial=G`` (fractions allowed; default 1 when the cluster has
GPUs, else 0), ``--address=auto|HOST:PORT`` (an existing Ray cluster; default: a local Ray),
``--num_cpus=N`` (local Ray only), ``--output=DIR`` (default ``ray_results/<model>-<dataset>-<time>``),
``--resume`` (continue the search in ``--output``, or the latest one for the model and dataset),
``--search_seed``, ``--grace_period``, ``--reduction_factor`` (ASHA), ``--verbose=0..3``,
``--config_files="a.yaml b.yaml"``; any other ``--<key>=<value>`` is a fixed config value of every
trial. See ``recbole_cmi/tune/search.py`` for how trials run and how to use a cluster. Set
RECBOLE_CMI_TRACEBACK=1 to see full tracebacks.
"""

import argparse
import sys


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
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
    parser.add_argument("--output", default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--search_seed", type=int, default=2022)
    parser.add_argument("--grace_period", type=int, default=1)
    parser.add_argument("--reduction_factor", type=float, default=2.0)
    parser.add_argument("--verbose", type=int, default=1)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if not (a.startswith("--") and "=" in a)]
    if unknown:
        parser.error(f"unrecognised arguments {' '.join(unknown)}: config keys are given as --key=value")
    # Values stay strings here; RecBole's Config converts them ("0.01" -> 0.01) as for its command line.
    config_dict = dict(a[2:].split("=", 1) for a in rest)

    from recbole_cmi.cli import run_cli

    return run_cli(lambda: _run(args, config_dict))


def _run(args, config_dict):
    from recbole_cmi.tune import SearchSettings, run_search

    settings = SearchSettings(
        model=args.model,
        dataset=args.dataset,
        params_file=args.params_file,
        config_files=[f for group in (args.config_files or []) for f in group.split()],
        config_dict=config_dict,
        num_samples=args.num_samples,
        scheduler=args.scheduler,
        search=args.search,
        max_concurrent=args.max_concurrent,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        address=args.address,
        num_cpus=args.num_cpus,
        output=args.output,
        resume=args.resume,
        search_seed=args.search_seed,
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        verbose=args.verbose,
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


if __name__ == "__main__":
    sys.exit(main())
