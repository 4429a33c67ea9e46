"""Speed and scale benchmark: training throughput, full-sort evaluation speed and peak memory per model.

``python -m recbole_cmi.benchmark speed [--sizes 100k:10k,1m:100k] [--models CMI,SASRec,...] [--steps 20]
[--out results/speed.md]``

For every size ``<interactions>:<items>`` (``k``/``m`` suffixes; e.g. ``5m:1m``) the benchmark, in one process:

1. generates a synthetic micro-video log with that many interactions over that many items into a temporary
   folder (:func:`recbole_cmi.data.synthetic.generate`'s fast mode, ``fast=True``, whose module docstring
   says how it differs from the exact one) and loads it once through RecBole (atomic files, leave-one-out
   split, all-prefix expansion);
2. for every model, with the same batch size, maximum history length and d (``embedding_size`` =
   ``hidden_size``), and the same ``num_interest`` for every multi-interest model: builds the model and
   RecBole's/our trainer, then runs ``--warmup`` untimed and ``--steps`` timed training steps on batches of
   the real training loader (our train-batch hooks included: contrastive views, shared negatives), each
   step ``calculate_loss`` + backward + the trainer's Adam step; the time includes drawing the batch;
3. runs one full-sort evaluation pass over ``--eval-users`` users of the test loader (``eval_batch_size``
   users per batch, one untimed warm-up batch first): the trainer's ``_full_sort_batch_eval`` (the model's
   ``full_sort_predict``, padding and history masked) followed by the top-``max(topk)`` selection that
   RecBole's collector does;
4. records training samples/s, the estimated seconds per epoch (training rows / samples per second),
   evaluation users/s and the peak memory of training and of evaluation: the rise of the process's
   resident set size above its level when the phase started (Linux ``VmHWM`` after resetting it through
   ``/proc/self/clear_refs``; elsewhere a 5 ms psutil sampler), and on a GPU
   ``torch.cuda.max_memory_allocated``.

The report (printed and written to ``--out``) gives every model's ratio to SASRec measured in the same run,
CMI's targets (epoch time <= 0.5x SASRec and <= 1.5x GRU4Rec, full-sort evaluation <= 1.5x SASRec), the
cost per training sample across sizes (constant cost per sample = epoch time linear in interactions), the
machine and the exact command. ``--profile CMI`` adds the top operators of a few profiled training steps
and of one full-sort evaluation batch (torch.profiler). A model entry may carry config overrides,
``Model:key=value[:key=value]`` (values read as yaml), so variants run side by side in one report, e.g.
``--models CMI,CMI:sparse_item_updates=True,SASRec``; every entry of class CMI is checked against the targets.
``--retrieval`` runs the retrieval benchmark instead (:mod:`recbole_cmi.benchmark.retrieval`): exact full-sort
evaluation against faiss retrieval per interest at 100k and 1M items.
Text after the line ``<!-- end of generated report -->`` in an existing ``--out`` file is kept when the report
is rewritten (hand-written analysis).

Bigger sizes: ``--sizes 5m:1m`` works given time and memory: RecBole's prefix expansion (a Python loop, about
1-2 min per million interactions on one core) and its ``[rows, max_len]`` history tensors (item ids and
timestamps, ~0.8 GB per million rows at max length 50, plus a copy per split while loading) dominate; budget
~10 GB of RAM and ~30 min for ``5m:1m`` on a 2-core CPU. Every model's full-softmax (CE) baselines then
score all 1M items per training row, and evaluation holds an ``eval_batch_size x items`` score matrix
(256 x 1M floats = 1 GB) whatever the model; CMI's and ComiRec's ``score_chunk_size`` bounds their extra
``batch x interests x chunk`` intermediate (``--score-chunk-size 0`` turns chunking off, to measure it).

``--generator exact`` uses the exact mode of ``generate`` instead (with ``n_users`` derived from the size;
hours at 5M interactions over 1M items, where the fast mode takes seconds).

Each finished model prints one line to stdout (``[size] model: samples/s, s/epoch, eval users/s, peak RSS``).

Here: the command. The measurement is in :mod:`~recbole_cmi.benchmark.speed_run`, the report in
:mod:`~recbole_cmi.benchmark.speed_report`.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from recbole_cmi.benchmark.measure import _say, parse_count, write_report
from recbole_cmi.benchmark.speed_report import format_report
from recbole_cmi.benchmark.speed_run import Size, run_size
from recbole_cmi.cli import OneLineArgumentParser, parse_model_variants, run_cli
from recbole_cmi.errors import ConfigValueError
from recbole_cmi.machine import describe_environment
from recbole_cmi.memory import release_memory

DEFAULT_MODELS = ("CMI", "SASRec", "GRU4Rec", "ComiRecSA", "ComiRecDR", "CL4SRec")
DEFAULT_SIZES = "100k:10k,1m:100k"


def parse_sizes(text: str) -> list[Size]:
    """``"100k:10k,1m:100k"`` -> sizes (interactions, items), in the order given."""
    sizes = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        fields = part.split(":")
        if len(fields) != 2:
            raise ValueError(f"size {part!r} must be <interactions>:<items>, e.g. 1m:100k")
        interactions, items = parse_count(fields[0]), parse_count(fields[1])
        if interactions < 1000:
            raise ValueError(f"size {part!r}: at least 1k interactions")
        if items < 200:
            raise ValueError(f"size {part!r}: at least 200 items (the longest history is 60 items, at most half)")
        sizes.append(Size(interactions, items, part.lower()))
    if not sizes:
        raise ValueError("no size given: use e.g. --sizes 100k:10k,1m:100k")
    return sizes


def build_parser(prog: str = "python -m recbole_cmi benchmark speed") -> OneLineArgumentParser:
    parser = OneLineArgumentParser(
        prog=prog,
        description="Training and full-sort evaluation speed and peak memory of CMI and its baselines on "
        "synthetic data of growing size (see the module docstring for the method).",
    )
    parser.add_argument(
        "--sizes",
        default=DEFAULT_SIZES,
        help=f"comma-separated <interactions>:<items> (k/m suffixes), default {DEFAULT_SIZES}; e.g. "
        "100k:10k,1m:100k,5m:1m (5m:1m needs ~10 GB RAM and ~30 min on 2 CPU cores)",
    )
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help="comma-separated model entries: Model or Model:key=value,key=value[,label=Name] (a variant with config "
        "overrides)",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per model (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first (default 2)")
    parser.add_argument("--batch-size", type=int, default=256, help="train_batch_size for every model")
    parser.add_argument("--max-len", type=int, default=50, help="MAX_ITEM_LIST_LENGTH for every model")
    parser.add_argument("--d", type=int, default=64, help="embedding_size = hidden_size for every model")
    parser.add_argument("--num-interest", type=int, default=8, help="m of CMI, K of ComiRec (default 8)")
    parser.add_argument("--eval-users", type=int, default=2048, help="users scored in the evaluation pass")
    parser.add_argument("--eval-batch-size", type=int, default=256, help="users per evaluation batch")
    parser.add_argument(
        "--score-chunk-size", type=int, default=None, help="override CMI's/ComiRec's score_chunk_size (0: off)"
    )
    parser.add_argument("--gpu-id", default="", help="RecBole's gpu_id: empty (default) = CPU, '0' = first GPU")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--categories", type=int, default=16, help="latent categories of the generator")
    parser.add_argument("--generator", choices=("fast", "exact"), default="fast", help="synthetic generator")
    parser.add_argument("--seed", type=int, default=2022)
    parser.add_argument(
        "--profile", default="", help="comma-separated model entries whose training step and evaluation to profile"
    )
    parser.add_argument("--profile-steps", type=int, default=5, help="steps under the profiler (default 5)")
    parser.add_argument(
        "--out",
        default=None,
        help="markdown report (default results/speed.md; with --retrieval results/speed-retrieval.md)",
    )
    parser.add_argument("--json", default=None, help="also write the raw numbers to this JSON file")
    from recbole_cmi.benchmark import retrieval

    retrieval.add_arguments(parser)
    return parser


def _check_args(parser, args) -> None:
    from recbole_cmi.utils import get_model

    try:
        args.size_list = parse_sizes(args.sizes)
    except ValueError as err:
        parser.error(str(err))
    try:
        variants = parse_model_variants(args.models, "--models")
        profiled = parse_model_variants(args.profile, "--profile") if args.profile.strip() else []
    except ConfigValueError as err:
        parser.error(str(err))
    args.model_variants = {v.label or v.text: (v.name, v.overrides) for v in variants}
    args.models = list(args.model_variants)
    args.profile = [v.label or v.text for v in profiled]
    for model_name, _ in args.model_variants.values():
        get_model(model_name)  # an unknown name is a one-line UnknownModelError
    unlisted = [name for name in args.profile if name not in args.models]
    if unlisted:
        parser.error(f"--profile names entries that --models does not run: {', '.join(unlisted)}")
    for key in ("steps", "batch_size", "max_len", "d", "num_interest", "eval_users", "eval_batch_size", "categories"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.profile_steps < 1:
        parser.error("--warmup must be >= 0 and --profile-steps >= 1")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(parser, args, argv))


def _import_lazily_loaded_modules() -> None:
    """Pay one-time imports (torch's optimizers load torch._dynamo on first use, ~100 MB) before measuring,
    so that they do not land in the first model's time and memory."""
    import torch
    from recbole.trainer import Trainer  # noqa: F401
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def _run(parser, args, argv) -> int:
    import json

    import torch

    if args.retrieval:
        from recbole_cmi.benchmark import retrieval

        retrieval.check_arguments(parser, args)
        args.out = args.out or "results/speed-retrieval.md"
        return retrieval.run(args, argv)
    _check_args(parser, args)
    args.out = args.out or "results/speed.md"

    if args.threads:
        torch.set_num_threads(args.threads)
    _import_lazily_loaded_modules()
    out_path = Path(args.out).resolve()
    json_path = Path(args.json).resolve() if args.json else None
    command = "python -m recbole_cmi.benchmark speed" + (" " + shlex.join(argv) if argv else "")
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    begin = time.perf_counter()
    sizes = []
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="recbole_cmi_speed_") as tmp:
        os.chdir(tmp)  # RecBole's trainer writes log_tensorboard/ under the working directory
        try:
            for size in args.size_list:
                sizes.append(run_size(size, args, Path(tmp)))
                release_memory()
        finally:
            os.chdir(cwd)
    environment = describe_environment(gpu=bool(args.gpu_id))
    report = format_report(sizes, args, environment, command, started, time.perf_counter() - begin)
    print(report)
    write_report(out_path, report)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "command": command,
            **environment,
            "sizes": [
                {
                    **{k: v for k, v in dataclasses.asdict(s).items() if k != "models"},
                    "models": [r.as_dict() for r in s.models],
                }
                for s in sizes
            ],
        }
        json_path.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    _say(f"wrote {out_path}" + (f" and {json_path}" if json_path else ""))
    return 1 if any(r.error for s in sizes for r in s.models) else 0


if __name__ == "__main__":
    sys.exit(main())
