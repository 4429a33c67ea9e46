"""What the speed benchmark measures (:mod:`recbole_cmi.benchmark.speed` has the method): per size, the synthetic
log generated, written and loaded once; per model on it, the timed training steps and full-sort evaluation pass,
their peak memory and, where asked, their torch.profiler tables.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from recbole_cmi.benchmark.measure import BuiltOnce, _mb, _say, _synchronize, _train_step, common_config, say_finished
from recbole_cmi.cli import parse_model_variants
from recbole_cmi.data.synthetic import SyntheticConfig, generate, write_atomic
from recbole_cmi.errors import ConfigValueError
from recbole_cmi.memory import PeakMemory, release_memory


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


@dataclasses.dataclass(frozen=True)
class Size:
    interactions: int
    items: int
    label: str


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


def run_size(size: Size, args, workdir: Path) -> SizeResult:
    from recbole.utils import init_seed

    from recbole_cmi.config import Config
    from recbole_cmi.pipeline import create_dataset

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


def bench_model(name: str, dataset, args, data_path: str, label: str) -> ModelResult:
    """Time ``--steps`` training steps and one full-sort evaluation pass of the entry ``name`` on ``dataset``."""
    import torch

    from recbole_cmi.pipeline import build_pipeline

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
        next_batch = _endless_batches(train_data)
        _time_training(result, model, trainer.optimizer, next_batch, device, args)
    result.train_peak_rss, result.train_peak_cuda = train_memory.rss_peak_delta, train_memory.cuda_peak_delta

    if name in args.profile:
        result.profile = _profile_steps(model, trainer.optimizer, next_batch, device, args.profile_steps)

    model.eval()
    trainer.tot_item_num = test_data._dataset.item_num
    k = max(config["topk"]) if isinstance(config["topk"], list) else int(config["topk"])
    with torch.no_grad(), PeakMemory(device) as eval_memory:
        _time_evaluation(result, trainer, test_data, k, device, args, profile=name in args.profile)
    result.eval_peak_rss, result.eval_peak_cuda = eval_memory.rss_peak_delta, eval_memory.cuda_peak_delta
    trainer.tensorboard.close()
    return result


def _endless_batches(loader):
    """``next_batch()``: the loader's next batch, starting the loader over when it ends."""
    batches = iter(loader)

    def next_batch():
        nonlocal batches
        try:
            return next(batches)
        except StopIteration:
            batches = iter(loader)
            return next(batches)

    return next_batch


def _time_training(result: ModelResult, model, optimizer, next_batch, device, args) -> None:
    """``--warmup`` untimed, then ``--steps`` timed training steps (drawing the batch included), into ``result``."""
    for step in range(args.warmup + args.steps):
        _synchronize(device)
        start = time.perf_counter()
        interaction = next_batch().to(device)
        fetched = time.perf_counter()
        _train_step(model, optimizer, interaction)
        _synchronize(device)
        if step >= args.warmup:
            result.train_seconds += time.perf_counter() - start
            result.data_seconds += fetched - start
            result.step_rows += len(interaction)
            result.steps += 1


def _time_evaluation(result: ModelResult, trainer, test_data, k: int, device, args, profile: bool) -> None:
    """Full-sort evaluation batches (scores and top-``k``) until ``--eval-users`` users, after one untimed warm-up
    batch (profiled with ``profile``), into ``result``."""
    import torch

    for index, (start, batched_data) in enumerate(_timed_batches(test_data)):
        interaction, scores, _, _ = trainer._full_sort_batch_eval(batched_data)
        torch.topk(scores, min(k, scores.shape[1]), dim=-1)
        _synchronize(device)
        if index == 0:  # warm-up batch, untimed
            if profile:
                result.eval_profile = _profile_eval_batch(trainer, batched_data, k, device)
            continue
        result.eval_seconds += time.perf_counter() - start
        result.eval_users += len(interaction)
        if result.eval_users >= args.eval_users:
            break


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
