"""Full-sort evaluation, exact against faiss retrieval, on large synthetic catalogues (``speed --retrieval``).

``python -m recbole_cmi.benchmark speed --retrieval --catalogues 100k,1m [--retrieval-interactions 200k]
[--retrieval-users 1000] [--retrieval-train-steps 200] [--ivf-nprobe 8,32] [--hnsw-ef 64,256]
[--out results/speed-retrieval.md]``, or on trained checkpoints instead of synthetic catalogues:
``... speed --retrieval --retrieval-checkpoints a.pth,b.pth`` (each on its own test split and catalogue, the same
evaluations as in step 3 below).

For every catalogue size N, in one process and on ``--threads`` threads (default 1, torch and faiss alike):

1. a synthetic log (:func:`recbole_cmi.data.synthetic.generate`, ``fast=True``, 16 latent categories with Zipf
   popularity) of ``--retrieval-interactions`` interactions, and an item file listing all N items, so the
   catalogue holds N items although most of them never occur in the log (a long tail, as in a real catalogue);
   loaded once by RecBole (leave-one-out, history items excluded from the ranking);
2. CMI (m = ``--num-interest``, sparse item updates) and SASRec (BPR, one uniform negative: a full softmax
   over 1M items per step would dominate the run), trained ``--retrieval-train-steps`` steps each, so that
   the vectors have the structure training gives them; the item rows the log never reaches keep their
   initialisation;
3. evaluation of ``--retrieval-users`` test users through the trainer's full-sort path and RecBole's collector
   and evaluator (the same calls as ``Trainer.evaluate``): exact, then faiss IVF at every ``--ivf-nprobe``
   (one index, ``faiss_nlist`` 0 = sqrt(N) lists) and HNSW at every ``--hnsw-ef`` (one index, ``--hnsw-m``
   links) for CMI, and the defaults of ``properties/overall.yaml`` for SASRec. Recorded: the index build time,
   the evaluation time per user (build excluded: it is paid once per evaluation), the peak resident memory
   above the level before the build (index and evaluation), Recall@50 and NDCG@20 of the same checkpoint, and
   the top-50 overlap: the share of the exact top-50 that faiss returns, averaged over users.

Each evaluation prints one line to stdout as it finishes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

DEFAULT_CATALOGUES = "100k,1m"
OVERLAP_K = 50
# A checkpoint trained briefly on a long-tail catalogue: Recall@50 and NDCG@20 are those of this model.
ACCURACY_METRICS = ("recall@50", "ndcg@20")


@dataclasses.dataclass
class RetrievalResult:
    catalogue: str
    items: int
    model: str
    retrieval: str
    build_seconds: float = math.nan  # nan: no index, or the previous row's index (another query setting)
    users: int = 0
    eval_seconds: float = 0.0
    peak_rss: int = 0
    metrics: dict = dataclasses.field(default_factory=dict)
    overlap: float = math.nan
    error: str | None = None
    # Synthetic catalogues: shares of the N items that occur in the log at least once and at least 3 times.
    log_coverage: tuple[float, float] | None = None

    @property
    def ms_per_user(self) -> float:
        return 1000 * self.eval_seconds / self.users if self.users else math.nan


def add_arguments(parser) -> None:
    group = parser.add_argument_group("retrieval benchmark (--retrieval)")
    group.add_argument(
        "--retrieval", action="store_true", help="benchmark faiss retrieval against exact full-sort evaluation"
    )
    group.add_argument("--catalogues", default=DEFAULT_CATALOGUES, help="catalogue sizes, default 100k,1m")
    group.add_argument("--retrieval-interactions", default="200k", help="interactions of the log (default 200k)")
    group.add_argument(
        "--retrieval-zipf",
        type=float,
        default=None,
        help="Zipf exponent of item popularity in the log (default: the generator's, 1.0); 0.5 with 10 "
        "interactions per item puts nearly every item of the catalogue into training",
    )
    group.add_argument("--retrieval-users", type=int, default=1000, help="test users evaluated (default 1000)")
    group.add_argument("--retrieval-train-steps", type=int, default=200, help="training steps per model")
    group.add_argument("--ivf-nprobe", default="8,32", help="CMI's IVF settings (lists probed), default 8,32")
    group.add_argument("--hnsw-ef", default="64,256", help="CMI's HNSW settings (efSearch), default 64,256")
    group.add_argument("--hnsw-m", type=int, default=None, help="HNSW links per node (default: faiss_hnsw_m's)")
    group.add_argument(
        "--retrieval-checkpoints",
        default="",
        help="comma-separated trained checkpoints (e.g. the accuracy benchmark's --keep_checkpoints): measure each "
        "on its own test split and catalogue instead of the synthetic catalogues",
    )


def check_arguments(parser, args) -> None:
    from recbole_cmi.benchmark.measure import parse_count

    try:
        args.catalogue_sizes = [(text.strip().lower(), parse_count(text)) for text in args.catalogues.split(",")]
        args.log_interactions = parse_count(args.retrieval_interactions)
        args.nprobes = [int(v) for v in args.ivf_nprobe.split(",") if v.strip()]
        args.ef_searches = [int(v) for v in args.hnsw_ef.split(",") if v.strip()]
    except ValueError as err:
        parser.error(f"retrieval benchmark: {err}")
    if any(n < 1000 for _, n in args.catalogue_sizes):
        parser.error("--catalogues: at least 1k items each")
    args.checkpoint_files = [p.strip() for p in args.retrieval_checkpoints.split(",") if p.strip()]
    for path in args.checkpoint_files:
        from recbole_cmi.paths import describe_unreadable

        problem = describe_unreadable(path, "--retrieval-checkpoints: checkpoint file")
        if problem:
            parser.error(problem)
    if args.hnsw_m is None:
        from recbole_cmi.retrieval import RetrievalSettings

        args.hnsw_m = RetrievalSettings().hnsw_m
    if min(args.nprobes + args.ef_searches + [args.hnsw_m, args.retrieval_users, args.retrieval_train_steps]) < 1:
        parser.error("--ivf-nprobe, --hnsw-ef, --hnsw-m, --retrieval-users and --retrieval-train-steps must be >= 1")
    if args.retrieval_zipf is not None and not 0.0 <= args.retrieval_zipf <= 5.0:
        parser.error(f"--retrieval-zipf must be in [0, 5], got {args.retrieval_zipf}")


def _settings(args, model_name: str):
    """(label, RetrievalSettings, build key) per evaluation of ``model_name``; the first is exact."""
    from recbole_cmi.retrieval import RetrievalSettings

    defaults = RetrievalSettings.from_config({}, mode="faiss")
    runs = [("exact", RetrievalSettings(), None)]
    if model_name == "CMI":
        for nprobe in args.nprobes:
            settings = dataclasses.replace(defaults, index="ivf", nprobe=nprobe)
            runs.append((settings.describe(), settings, ("ivf", settings.nlist)))
        for ef in args.ef_searches:
            settings = dataclasses.replace(defaults, index="hnsw", hnsw_m=args.hnsw_m, ef_search=ef)
            runs.append((settings.describe(), settings, ("hnsw", args.hnsw_m)))
    else:
        runs.append((defaults.describe() + " (defaults)", defaults, (defaults.index, defaults.nlist, defaults.hnsw_m)))
    return runs


def _evaluate(trainer, test_data, max_users: int):
    """One pass as ``Trainer.evaluate`` makes it; returns (seconds, users, metrics, top-50 item ids [U, 50])."""
    import torch

    tops, seconds, users = [], 0.0, 0
    with torch.no_grad():
        batches = iter(test_data)
        while users < max_users:
            start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                break
            interaction, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batch)
            trainer.eval_collector.eval_batch_collect(scores, interaction, positive_u, positive_i)
            seconds += time.perf_counter() - start
            users += len(interaction)
            if trainer.retrieval.mode == "faiss":  # outside the timing: the overlap's top-50
                found = trainer.retrieve_batch(interaction)
                tops.append(found.items[:, :OVERLAP_K].masked_fill(torch.isinf(found.scores[:, :OVERLAP_K]), 0))
            else:
                values, top = scores.topk(OVERLAP_K, dim=1)
                tops.append(top.masked_fill(torch.isinf(values), 0))
    struct = trainer.eval_collector.get_data_struct()
    metrics = {k: float(v) for k, v in trainer.evaluator.evaluate(struct).items()}
    return seconds, users, metrics, torch.cat(tops)


def _overlap(found, exact) -> float:
    hits = (found.unsqueeze(2) == exact.unsqueeze(1)) & (exact.unsqueeze(1) > 0)
    return float((hits.any(dim=1).sum(dim=1) / (exact > 0).sum(dim=1).clamp(min=1)).mean())


def bench_model(model_name: str, dataset, args, folder: Path, label: str) -> list[RetrievalResult]:
    """Train ``model_name`` briefly on the synthetic catalogue, then :func:`measure` it."""
    from recbole_cmi.benchmark.measure import _say, _train_step, common_config
    from recbole_cmi.pipeline import build_pipeline

    overrides = {"sparse_item_updates": True} if model_name == "CMI" else {"loss_type": "BPR"}
    settings = {
        **common_config(args, str(folder)),
        **_load_columns(),
        "exclude_history_items": True,
        "metrics": ["Recall", "NDCG"],
        "topk": [20, 50],
        "valid_metric": "NDCG@20",
        **overrides,
    }
    pipeline = build_pipeline(model_name, "bench", config_dict=settings, data=dataset, log=False)
    model, trainer, train_data = pipeline.model, pipeline.trainer, pipeline.train_data
    model.train()
    batches, start, loss = iter(train_data), time.perf_counter(), math.nan
    for _ in range(args.retrieval_train_steps):
        try:
            interaction = next(batches)
        except StopIteration:
            batches = iter(train_data)
            interaction = next(batches)
        loss = _train_step(model, trainer.optimizer, interaction.to(pipeline.config["device"])).item()
    _say(
        f"[{label}] {model_name}: {args.retrieval_train_steps} training steps in {time.perf_counter() - start:.1f} s "
        f"(last loss {loss:.4f})"
    )
    return measure(pipeline, args, label, model_name)


def run_checkpoint(path: str, args) -> list[RetrievalResult]:
    """Exact against faiss on a trained checkpoint's own test split (all its items; ``--retrieval-users`` users)."""
    from recbole_cmi.pipeline import restore_pipeline

    pipeline = restore_pipeline(path)
    pipeline.config["metrics"], pipeline.config["topk"] = ["Recall", "NDCG"], [20, 50]  # ACCURACY_METRICS
    pipeline.build_trainer()
    return measure(pipeline, args, pipeline.config["dataset"], pipeline.config["model"])


def measure(pipeline, args, label: str, model_name: str) -> list[RetrievalResult]:
    """Evaluate ``pipeline``'s model exactly, then with every faiss setting of :func:`_settings`."""
    from recbole_cmi.memory import PeakMemory, release_memory
    from recbole_cmi.retrieval import build_item_index

    config, model, trainer, test_data = pipeline.config, pipeline.model, pipeline.trainer, pipeline.test_data
    trainer.tot_item_num = test_data._dataset.item_num
    n_items = test_data._dataset.item_num - 1
    model.eval()
    results, exact_top, index, index_key = [], None, None, None
    for label_text, retrieval, key in _settings(args, model_name):
        result = RetrievalResult(catalogue=label, items=n_items, model=model_name, retrieval=label_text)
        trainer.retrieval = retrieval
        if key != index_key:
            index, index_key = None, key
            trainer.item_index = None
            release_memory()
        with PeakMemory(config["device"]) as memory:
            if retrieval.mode == "faiss":
                if index is None:
                    index = build_item_index(model, retrieval, config["device"])
                    result.build_seconds = index.build_seconds
                index.set_search_params(retrieval.nprobe, retrieval.ef_search)
                trainer.item_index = index
            result.eval_seconds, result.users, result.metrics, top = _evaluate(trainer, test_data, args.retrieval_users)
        result.peak_rss = memory.rss_peak_delta
        if exact_top is None:
            exact_top = top
        result.overlap = _overlap(top, exact_top)
        results.append(result)
        _say_result(result)
    del index, trainer
    return results


def _load_columns() -> dict:
    # The item file lists the whole catalogue: loading its id column makes every item a candidate.
    return {"load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]}}


def _say_result(r: RetrievalResult) -> None:
    from recbole_cmi.benchmark.measure import _mb, say_finished

    metrics = ", ".join(f"{k} {r.metrics.get(k, math.nan):.4f}" for k in ACCURACY_METRICS)
    say_finished(
        f"[{r.catalogue}] {r.model} {r.retrieval}: build {r.build_seconds:.1f} s, {r.ms_per_user:.2f} ms/user over "
        f"{r.users} users, peak RSS +{_mb(r.peak_rss)} MB, {metrics}, top-{OVERLAP_K} overlap {r.overlap:.4f}"
    )


def run_catalogue(label: str, n_items: int, args, workdir: Path) -> list[RetrievalResult]:
    from recbole.utils import init_seed

    from recbole_cmi.benchmark.measure import BuiltOnce, _say, common_config
    from recbole_cmi.config import Config
    from recbole_cmi.data.synthetic import SyntheticConfig, generate, write_atomic
    from recbole_cmi.memory import release_memory
    from recbole_cmi.pipeline import create_dataset

    folder = workdir / f"catalogue_{label}"
    start = time.perf_counter()
    cfg = SyntheticConfig(n_users=1, n_items=n_items, n_categories=args.categories, seed=args.seed)
    if args.retrieval_zipf is not None:
        cfg = dataclasses.replace(cfg, zipf=args.retrieval_zipf)
    log = generate(cfg, fast=True, n_interactions=args.log_interactions)
    coverage = log_coverage(log.items, n_items)
    write_atomic(log, folder / "bench", "bench")
    config = Config(
        "SASRec", "bench", config_dict={**common_config(args, str(folder)), **_load_columns()}, read_argv=False
    )
    init_seed(config["seed"], config["reproducibility"])
    dataset = BuiltOnce(create_dataset(config))
    dataset.build()
    _say(
        f"[{label}] catalogue of {dataset.item_num - 1} items, {dataset.inter_num} interactions: generated and "
        f"loaded in {time.perf_counter() - start:.1f} s"
    )
    results = []
    for model_name in ("CMI", "SASRec"):
        results += bench_model(model_name, dataset, args, folder, label)
        release_memory()
    for result in results:
        result.log_coverage = coverage
    return results


def log_coverage(items, n_items: int) -> tuple[float, float]:
    """Shares of the catalogue's ``n_items`` items (ids 1..n_items) that ``items`` holds at least once, 3 times."""
    import numpy as np

    counts = np.bincount(np.asarray(items), minlength=n_items + 1)[1 : n_items + 1]
    return float((counts >= 1).mean()), float((counts >= 3).mean())


def format_report(results: list[RetrievalResult], args, environment: dict, command: str, started: str, wall: float):
    """The report; ``environment``: :func:`recbole_cmi.machine.describe_environment`'s dict."""
    from recbole_cmi.benchmark.measure import _mb
    from recbole_cmi.machine import machine_text, versions_text
    from recbole_cmi.markdown import markdown_table

    lines = [
        "# Retrieval benchmark: exact full sort against faiss",
        "",
        f"Generated by `{command}` ({started}, {wall / 60:.1f} min in all).",
        "",
        f"- Machine: {machine_text(environment['machine'])}; torch and faiss threads: {args.threads or 1}",
        f"- Versions: {versions_text(environment['versions'])}, faiss {_faiss_version()}",
        *(_checkpoint_lines(args) if args.checkpoint_files else _synthetic_lines(args, results)),
        f"- Evaluation: {args.retrieval_users} test users through the trainer's full-sort path and RecBole's "
        "collector and evaluator. ms/user excludes the index build (paid once per evaluation, its own column); "
        "peak RSS: rise above the level before the build. Recall@50 and NDCG@20 relative to the same model's "
        f"exact ranking; top-{OVERLAP_K} overlap: share of the exact top-{OVERLAP_K} that the retrieval returns.",
        "",
    ]
    header = ["N", "model", "retrieval", "build s", "eval ms/user", "vs SASRec exact", "peak RSS MB", "Recall@50"]
    header += ["NDCG@20", "Recall@50 vs exact", "NDCG@20 vs exact", f"top-{OVERLAP_K} overlap"]
    rows = []
    for r in results:
        if r.error:
            rows.append([r.catalogue, r.model, r.retrieval, f"failed: {r.error}"])
            continue
        exact = next(x for x in results if x.catalogue == r.catalogue and x.model == r.model)
        sasrec = next((x for x in results if x.catalogue == r.catalogue and x.model == "SASRec"), None)
        vs_sasrec = f"{r.ms_per_user / sasrec.ms_per_user:.2f}x" if sasrec else "-"  # no SASRec measured
        ratios = [_ratio(r.metrics.get(k), exact.metrics.get(k)) for k in ACCURACY_METRICS]
        build = (
            "-" if r.retrieval == "exact" else "same index" if math.isnan(r.build_seconds) else f"{r.build_seconds:.1f}"
        )
        rows.append(
            [f"{r.catalogue} ({r.items:,})", r.model, r.retrieval, build, f"{r.ms_per_user:.2f}", vs_sasrec]
            + [_mb(r.peak_rss), f"{r.metrics.get('recall@50', math.nan):.4f}"]
            + [f"{r.metrics.get('ndcg@20', math.nan):.4f}", ratios[0], ratios[1], f"{r.overlap:.4f}"]
        )
    lines.append(markdown_table(header, rows, "lll" + "r" * 9))
    return "\n".join(lines) + "\n"


def _synthetic_lines(args, results) -> list[str]:
    from recbole_cmi.data.synthetic import SyntheticConfig

    zipf = SyntheticConfig().zipf if args.retrieval_zipf is None else args.retrieval_zipf
    covered = {r.catalogue: r.log_coverage for r in results if r.log_coverage is not None}
    shares = "; ".join(f"{label}: {once:.1%} ({thrice:.1%})" for label, (once, thrice) in covered.items())
    return [
        f"- Data: a synthetic log of {args.log_interactions:,} interactions (`fast` generator, {args.categories} "
        f"latent categories, Zipf popularity exponent {zipf:g}, seed {args.seed}) over a catalogue of N items (an "
        f"item file lists all of them, also those the log never reaches). Share of the catalogue that occurs in the "
        f"log (at least 3 times): {shares or '-'}. d = {args.d}, MAX_ITEM_LIST_LENGTH {args.max_len}, "
        f"{args.eval_batch_size} users per evaluation batch, history items excluded.",
        f"- Models: CMI (m = {args.num_interest}, sparse item updates) and SASRec (BPR), "
        f"{args.retrieval_train_steps} training steps of {args.batch_size} rows each; one checkpoint per model "
        "and catalogue, evaluated every way below.",
    ]


def _checkpoint_lines(args) -> list[str]:
    names = ", ".join(f"`{Path(p).name}`" for p in args.checkpoint_files)
    return [
        f"- Data and models: trained checkpoints ({names}), each on its own dataset's test split and whole "
        "catalogue, with the settings it was trained with (history exclusion, evaluation batch); first "
        f"{args.retrieval_users} test users.",
    ]


def _ratio(value, reference) -> str:
    if value is None or not reference:
        return "-"
    return f"{value / reference:.4f}"


def _faiss_version() -> str:
    from recbole_cmi.retrieval import import_faiss

    return getattr(import_faiss(), "__version__", "unknown")


def run(args, argv) -> int:
    """The ``--retrieval`` mode of ``python -m recbole_cmi.benchmark speed``."""
    import json
    import os
    import shlex
    import tempfile

    import torch

    from recbole_cmi.benchmark.measure import _say, write_report
    from recbole_cmi.machine import describe_environment
    from recbole_cmi.retrieval import import_faiss

    faiss = import_faiss()
    threads = args.threads or 1
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    command = "python -m recbole_cmi.benchmark speed" + (" " + shlex.join(argv) if argv else "")
    started, begin = time.strftime("%Y-%m-%d %H:%M %Z"), time.perf_counter()
    results, cwd = [], os.getcwd()
    with tempfile.TemporaryDirectory(prefix="recbole_cmi_retrieval_") as tmp:
        os.chdir(tmp)  # RecBole's trainer writes log_tensorboard/ under the working directory
        try:
            for path in args.checkpoint_files:
                results += run_checkpoint(os.path.join(cwd, path), args)
            for label, n_items in [] if args.checkpoint_files else args.catalogue_sizes:
                results += run_catalogue(label, n_items, args, Path(tmp))
        finally:
            os.chdir(cwd)
    report = format_report(
        results, args, describe_environment(gpu=bool(args.gpu_id)), command, started, time.perf_counter() - begin
    )
    print(report)
    out = Path(args.out).resolve()
    write_report(out, report)
    if args.json:
        payload = [{**dataclasses.asdict(r), "ms_per_user": r.ms_per_user} for r in results]
        Path(args.json).write_text(json.dumps({"command": command, "results": payload}, indent=1), encoding="utf-8")
    _say(f"wrote {out}")
    return 1 if any(r.error for r in results) else 0
