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
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from recbole_cmi.benchmark.measure import (
    BuiltOnce,
    _mb,
    _say,
    _synchronize,
    _train_step,
    common_config,
    parse_count,
    say_finished,
    write_report,
)
from recbole_cmi.cli import OneLineArgumentParser, parse_model_variants, run_cli
from recbole_cmi.data.synthetic import SyntheticConfig, generate, write_atomic
from recbole_cmi.errors import ConfigValueError
from recbole_cmi.machine import describe_environment, machine_text, versions_text
from recbole_cmi.markdown import markdown_table
from recbole_cmi.memory import PeakMemory, release_memory

DEFAULT_MODELS = ("CMI", "SASRec", "GRU4Rec", "ComiRecSA", "ComiRecDR", "CL4SRec")
DEFAULT_SIZES = "100k:10k,1m:100k"
REFERENCE_MODEL = "SASRec"
# Targets from the "Speed and scale" issue: CMI's time relative to a baseline (lower is better).
TARGETS = (
    ("epoch", "SASRec", 0.5),
    ("epoch", "GRU4Rec", 1.5),
    ("eval", "SASRec", 1.5),
)


# --------------------------------------------------------------------------------------------- models
def parse_model_spec(text: str) -> tuple[str, dict]:
    """``"CMI:sparse_item_updates=True"`` -> ``("CMI", {"sparse_item_updates": True})`` (one ``--models`` entry,
    :func:`recbole_cmi.cli.parse_model_variants`)."""
    variants = parse_model_variants(text, "--models")
    if len(variants) != 1:
        raise ConfigValueError(f"--models: {text!r} holds {len(variants)} entries, expected one")
    return variants[0].name, variants[0].overrides


def model_of(args, entry: str) -> tuple[str, dict]:
    """The model and config overrides of a ``--models`` entry as the report names it (its label, or as written)."""
    return getattr(args, "model_variants", {}).get(entry) or parse_model_spec(entry)


# --------------------------------------------------------------------------------------------- sizes


@dataclasses.dataclass(frozen=True)
class Size:
    interactions: int
    items: int
    label: str


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


# --------------------------------------------------------------------------------------------- data


# --------------------------------------------------------------------------------------------- memory


# --------------------------------------------------------------------------------------------- benchmark
@dataclasses.dataclass
class ModelResult:
    model: str
    size: str
    params: int = 0
    train_rows: int = 0
    steps: int = 0
    step_rows: int = 0
    train_seconds: float = 0.0
    data_seconds: float = 0.0
    eval_users: int = 0
    eval_seconds: float = 0.0
    train_peak_rss: int = 0
    eval_peak_rss: int = 0
    train_peak_cuda: int | None = None
    eval_peak_cuda: int | None = None
    profile: str | None = None
    eval_profile: str | None = None
    error: str | None = None

    @property
    def samples_per_s(self) -> float:
        return self.step_rows / self.train_seconds if self.train_seconds > 0 else math.nan

    @property
    def epoch_seconds(self) -> float:
        return self.train_rows / self.samples_per_s if self.samples_per_s > 0 else math.nan

    @property
    def users_per_s(self) -> float:
        return self.eval_users / self.eval_seconds if self.eval_seconds > 0 else math.nan

    @property
    def us_per_sample(self) -> float:
        return 1e6 / self.samples_per_s if self.samples_per_s > 0 else math.nan

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.update(samples_per_s=self.samples_per_s, epoch_seconds=self.epoch_seconds, users_per_s=self.users_per_s)
        return out


@dataclasses.dataclass
class SizeResult:
    size: Size
    interactions: int = 0
    users: int = 0
    items: int = 0
    generate_seconds: float = 0.0
    write_seconds: float = 0.0
    load_seconds: float = 0.0
    load_peak_rss: int = 0
    models: list = dataclasses.field(default_factory=list)


def bench_model(name: str, dataset, args, data_path: str, label: str) -> ModelResult:
    """Time ``--steps`` training steps and one full-sort evaluation pass of the entry ``name`` on ``dataset``."""
    import torch

    from recbole_cmi.quick_start import build_pipeline

    result = ModelResult(model=name, size=label)
    model_name, overrides = model_of(args, name)
    settings = {**common_config(args, data_path), **overrides}
    pipeline = build_pipeline(model_name, "bench", config_dict=settings, data=dataset, log=False, until="data")
    config, train_data, test_data = pipeline.config, pipeline.train_data, pipeline.test_data
    result.train_rows = len(train_data._dataset)
    device = config["device"]

    with PeakMemory(device) as train_memory:  # the model and its optimizer are part of the training memory
        model = pipeline.build_model()
        trainer = pipeline.build_trainer()
        if hasattr(train_data, "bind_model"):
            train_data.bind_model(model)
        result.params = sum(p.numel() for p in model.parameters())
        model.train()
        batches = iter(train_data)

        def next_batch():
            nonlocal batches
            try:
                return next(batches)
            except StopIteration:
                batches = iter(train_data)
                return next(batches)

        for step in range(args.warmup + args.steps):
            _synchronize(device)
            start = time.perf_counter()
            interaction = next_batch().to(device)
            fetched = time.perf_counter()
            _train_step(model, trainer.optimizer, interaction)
            _synchronize(device)
            if step >= args.warmup:
                result.train_seconds += time.perf_counter() - start
                result.data_seconds += fetched - start
                result.step_rows += len(interaction)
                result.steps += 1
    result.train_peak_rss, result.train_peak_cuda = train_memory.rss_peak_delta, train_memory.cuda_peak_delta

    if name in args.profile:
        result.profile = _profile_steps(model, trainer.optimizer, next_batch, device, args.profile_steps)

    model.eval()
    trainer.tot_item_num = test_data._dataset.item_num
    k = max(config["topk"]) if isinstance(config["topk"], list) else int(config["topk"])
    with torch.no_grad(), PeakMemory(device) as eval_memory:
        for index, (start, batched_data) in enumerate(_timed_batches(test_data)):
            interaction, scores, _, _ = trainer._full_sort_batch_eval(batched_data)
            torch.topk(scores, min(k, scores.shape[1]), dim=-1)
            _synchronize(device)
            if index == 0:  # warm-up batch, untimed
                if name in args.profile:
                    result.eval_profile = _profile_eval_batch(trainer, batched_data, k, device)
                continue
            result.eval_seconds += time.perf_counter() - start
            result.eval_users += len(interaction)
            if result.eval_users >= args.eval_users:
                break
    result.eval_peak_rss, result.eval_peak_cuda = eval_memory.rss_peak_delta, eval_memory.cuda_peak_delta
    trainer.tensorboard.close()
    return result


def _timed_batches(loader):
    """Yield ``(start time, batch)``: the time is taken before the loader builds the batch."""
    batches = iter(loader)
    while True:
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        yield start, batch


def _profiled(device, work, header: str, per: int, row_limit: int) -> str:
    """Run ``work(record_function)`` under torch.profiler: its ``## `` ranges (CPU ms / ``per``), then the top operators."""
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        work(record_function)
        _synchronize(device)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    phases = [e for e in prof.key_averages() if e.key.startswith("## ")]
    lines = [header]
    lines += [f"  {e.key[3:]:<40} {e.cpu_time_total / 1000 / per:9.1f}" for e in phases]
    lines.append("")
    lines.append(prof.key_averages().table(sort_by=sort_by, row_limit=row_limit, max_name_column_width=48))
    return "\n".join(lines)


def _profile_steps(model, optimizer, next_batch, device, steps: int) -> str:
    def work(record_function):
        for _ in range(steps):
            with record_function("## data: next batch + hooks"):
                interaction = next_batch().to(device)
            optimizer.zero_grad()
            with record_function("## forward: calculate_loss"):
                losses = model.calculate_loss(interaction)
                loss = sum(losses) if isinstance(losses, tuple) else losses
            with record_function("## backward"):
                loss.backward()
            with record_function("## optimizer step"):
                optimizer.step()
            _synchronize(device)

    return _profiled(device, work, f"{steps} profiled steps; phases (CPU total, ms per step):", steps, 18)


def _profile_eval_batch(trainer, batched_data, k: int, device) -> str:
    """Top operators of one full-sort evaluation batch (scoring, history mask, top-k), as RecBole runs it."""
    import torch

    def work(record_function):
        with record_function("## full_sort_predict + history mask"):
            _, scores, _, _ = trainer._full_sort_batch_eval(batched_data)
        with record_function("## top-k"):
            torch.topk(scores, min(k, scores.shape[1]), dim=-1)

    header = f"1 profiled batch of {len(batched_data[0])} users; phases (CPU total, ms):"
    return _profiled(device, work, header, 1, 12)


def run_size(size: Size, args, workdir: Path) -> SizeResult:
    from recbole.utils import init_seed

    from recbole_cmi.config import Config
    from recbole_cmi.quick_start import create_dataset

    out = SizeResult(size=size)
    folder = workdir / size.label.replace(":", "_")
    cfg = SyntheticConfig(
        n_users=max(1, size.interactions // 25), n_items=size.items, n_categories=args.categories, seed=args.seed
    )
    start = time.perf_counter()
    fast = args.generator != "exact"
    data = generate(cfg, fast=fast, n_interactions=size.interactions if fast else None)
    out.generate_seconds = time.perf_counter() - start
    out.interactions, out.users = len(data.users), int(data.users.max())
    start = time.perf_counter()
    write_atomic(data, folder / "bench", "bench")
    out.write_seconds = time.perf_counter() - start
    del data

    config = Config(
        model_of(args, args.models[0])[0], "bench", config_dict=common_config(args, str(folder)), read_argv=False
    )
    init_seed(config["seed"], config["reproducibility"])
    with PeakMemory() as load_memory:
        start = time.perf_counter()
        dataset = BuiltOnce(create_dataset(config))
        dataset.build()
        out.load_seconds = time.perf_counter() - start
    out.load_peak_rss = load_memory.rss_peak_delta
    out.items = dataset.item_num - 1
    _say(
        f"[{size.label}] {out.interactions} interactions, {out.users} users, {out.items} items: generated in "
        f"{out.generate_seconds:.1f} s, written in {out.write_seconds:.1f} s, loaded and split by RecBole in "
        f"{out.load_seconds:.1f} s"
    )
    for name in args.models:
        try:
            result = bench_model(name, dataset, args, str(folder), size.label)
        except (RuntimeError, MemoryError, ValueError) as err:  # e.g. CUDA out of memory: report, go on
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            result = ModelResult(model=name, size=size.label, error=f"{type(err).__name__}: {first}"[:200])
        out.models.append(result)
        say_finished(_one_line(result))
        release_memory()
    return out


def _one_line(r: ModelResult) -> str:
    if r.error:
        return f"[{r.size}] {r.model}: failed: {r.error}"
    return (
        f"[{r.size}] {r.model}: {r.samples_per_s:,.0f} samples/s ({r.epoch_seconds:,.1f} s/epoch of "
        f"{r.train_rows:,} rows), eval {r.users_per_s:,.0f} users/s, peak RSS +{_mb(r.train_peak_rss)} MB "
        f"train / +{_mb(r.eval_peak_rss)} MB eval"
    )


# --------------------------------------------------------------------------------------------- report


def _num(value: float, digits: int = 0) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}x"


def _time_ratio(results: list[ModelResult], model: str, baseline: str, kind: str) -> float | None:
    """Time of ``model`` relative to ``baseline`` (epoch time or evaluation time per user); None if missing."""
    found = {r.model: r for r in results if not r.error}
    if model not in found or baseline not in found:
        return None
    a, b = found[model], found[baseline]
    if kind == "epoch":
        return a.epoch_seconds / b.epoch_seconds
    return b.users_per_s / a.users_per_s


def format_report(sizes: list[SizeResult], args, environment: dict, command: str, started: str, wall: float) -> str:
    """The report; ``environment``: :func:`recbole_cmi.machine.describe_environment`'s dict."""
    gpu = bool(environment["machine"]["gpu"])
    lines = [
        "# Speed and scale benchmark",
        "",
        f"Generated by `{command}` ({started}, {wall / 60:.1f} min in all).",
        "",
        "## Machine and settings",
        "",
        f"- Machine: {machine_text(environment['machine'])}",
        f"- Versions: {versions_text(environment['versions'])}",
        f"- Every model: train_batch_size {args.batch_size}, MAX_ITEM_LIST_LENGTH {args.max_len}, d = "
        f"embedding_size = hidden_size = {args.d}, num_interest {args.num_interest} (CMI, ComiRecSA, ComiRecDR), "
        f"otherwise each model's defaults, including its loss (CMI: sampled softmax over the batch's shared "
        f"negatives + InfoNCE; the others: RecBole's full softmax (CE) over the catalogue)"
        + (f"; score_chunk_size {args.score_chunk_size}" if args.score_chunk_size is not None else ""),
        f"- Training: {args.warmup} untimed + {args.steps} timed steps (batch from the real training loader "
        "with its hooks, calculate_loss, backward, the trainer's optimizer step: Adam, or LazyAdam for sparse item "
        "updates). Seconds per epoch = training rows / samples per second. Evaluation: full sort over all items "
        f"for {args.eval_users} test users, "
        f"{args.eval_batch_size} per batch (one untimed warm-up batch), history masking and top-k included.",
        "- Peak memory: rise of the process's resident set above its level at the start of the phase (training: "
        "model, optimizer state and the steps; evaluation: the pass)"
        + ("; GPU: torch.cuda.max_memory_allocated above the start." if gpu else "."),
        f"- Data: `{args.generator}` synthetic generator (see `recbole_cmi/data/synthetic.py`), "
        f"{args.categories} latent categories, seed {args.seed}.",
        "",
        "## Data",
        "",
    ]
    header = ["size", "interactions", "users", "items", "training rows", "generate s", "write s"]
    header += ["RecBole load + split s", "load peak RSS MB"]
    rows = []
    for s in sizes:
        train_rows = next((r.train_rows for r in s.models if r.train_rows), 0)
        rows.append(
            [s.size.label, f"{s.interactions:,}", f"{s.users:,}", f"{s.items:,}", f"{train_rows:,}"]
            + [f"{s.generate_seconds:.1f}", f"{s.write_seconds:.1f}", f"{s.load_seconds:.1f}", _mb(s.load_peak_rss)]
        )
    lines.append(markdown_table(header, rows, "l" + "r" * 8))
    for s in sizes:
        header = ["model", "params", "train samples/s", "s/epoch", "epoch vs SASRec", "eval users/s"]
        header += ["eval time vs SASRec", "train peak RSS MB", "eval peak RSS MB", "data share of step"]
        header += ["train GPU MB", "eval GPU MB"] if gpu else []
        rows = []
        for r in s.models:
            if r.error:
                rows.append([r.model, f"failed: {r.error}"])
                continue
            rows.append(
                [r.model, f"{r.params:,}", _num(r.samples_per_s), _num(r.epoch_seconds, 1)]
                + [_ratio(_time_ratio(s.models, r.model, REFERENCE_MODEL, "epoch")), _num(r.users_per_s)]
                + [_ratio(_time_ratio(s.models, r.model, REFERENCE_MODEL, "eval")), _mb(r.train_peak_rss)]
                + [_mb(r.eval_peak_rss), f"{100 * r.data_seconds / r.train_seconds:.0f} %"]
                + ([_mb(r.train_peak_cuda), _mb(r.eval_peak_cuda)] if gpu else [])
            )
        lines += ["", f"## Results at {s.size.label}", "", markdown_table(header, rows, "l" + "r" * (len(header) - 1))]
    lines += [
        "",
        "## CMI against the targets",
        "",
        "CMI's time divided by the baseline's, in the same run (lower is better).",
        "",
    ]
    header = ["size", "model", *(f"{kind} vs {base} (target <= {limit})" for kind, base, limit in TARGETS)]
    rows = []
    for s in sizes:
        for entry in dict.fromkeys(r.model for r in s.models if model_of(args, r.model)[0] == "CMI"):
            cells = []
            for kind, base, limit in TARGETS:
                ratio = _time_ratio(s.models, entry, base, kind)
                cells.append("-" if ratio is None else f"{ratio:.2f}x {'met' if ratio <= limit else 'MISSED'}")
            rows.append([s.size.label, entry, *cells])
    lines.append(markdown_table(header, rows, "ll" + "r" * len(TARGETS)))
    lines += _scaling_section(sizes)
    for s in sizes:
        for r in s.models:
            if r.profile:
                lines += ["", f"## Profile of {r.model}'s training step at {s.size.label}", "", "```", r.profile, "```"]
            if r.eval_profile:
                lines += [
                    "",
                    f"## Profile of {r.model}'s full-sort evaluation at {s.size.label}",
                    "",
                    "```",
                    r.eval_profile,
                    "```",
                ]
    return "\n".join(lines) + "\n"


def _scaling_section(sizes: list[SizeResult]) -> list[str]:
    if len(sizes) < 2:
        return []
    models = list(dict.fromkeys(r.model for s in sizes for r in s.models))
    lines = [
        "",
        "## Scaling with the data",
        "",
        "Microseconds per training sample at each size (constant = epoch time linear in the number of "
        "interactions), and the growth of the epoch time from the first size to each other one, divided by "
        "the growth of the training rows (1.00 = linear).",
        "",
    ]
    header = ["model", *(f"us/sample {s.size.label}" for s in sizes)]
    header += [f"epoch growth / rows growth {sizes[0].size.label} -> {s.size.label}" for s in sizes[1:]]
    rows = []
    for model in models:
        per_size = [next((r for r in s.models if r.model == model and not r.error), None) for s in sizes]
        cells = [_num(r.us_per_sample, 1) if r else "-" for r in per_size]
        first = per_size[0]
        for r in per_size[1:]:
            if first is None or r is None:
                cells.append("-")
            else:
                growth = (r.epoch_seconds / first.epoch_seconds) / (r.train_rows / first.train_rows)
                cells.append(f"{growth:.2f}")
        rows.append([model, *cells])
    lines.append(markdown_table(header, rows, "l" + "r" * (2 * len(sizes) - 1)))
    return lines


# --------------------------------------------------------------------------------------------- command line
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
