"""GPU check: one epoch per model on MicroLens-sized synthetic data, with and without AMP, on CUDA.

``python -m recbole_cmi.benchmark gpu [--models CMI,SASRec,ComiRecSA] [--out results/gpu.md]``
(``scripts/gpu_check.sh`` runs it unattended with a time limit).

Data: the vectorised micro-video generator of the speed benchmark
(:func:`recbole_cmi.data.synthetic.generate` with ``fast=True``) sized like MicroLens-50k after its 5-core filter
(332,730 interactions over 14,079 items, ~46k users, mean history 7.2, histories cut at 20 items), written to a
temporary folder and loaded by RecBole once (leave-one-out split, prefix expansion); nothing is downloaded.

For every model, with the same seed, batch size and ``d``, the check

1. trains one epoch in fp32 and one with AMP (RecBole's ``enable_amp``: autocast, float16 on CUDA), each from the
   same initial weights, and times the epoch (``s/epoch``) and one full-sort evaluation of every test user
   (``eval users/s``; the whole pass, metrics included), with the peak CUDA memory of each phase
   (``torch.cuda.max_memory_allocated`` above its level at the start);
2. records the test metrics of both, and how the fp32 model's full-sort scores agree across devices and
   precisions on the first ``--agree-users`` test users: the same weights scored on the CPU and on CUDA, and on
   CUDA under autocast (float16): the largest score difference and the mean overlap of the top-20 lists;
3. with two GPUs or more, trains SASRec for one epoch with two DDP processes (nccl, ``gpu_id=0,1``) and compares
   its test metrics and wall time with the one-GPU run.

Without CUDA it says so and does a dry run of the same code on the CPU with small data (``--interactions``,
``--items``): "CUDA" is then the CPU and AMP is bfloat16 autocast, so the numbers only show that the check runs;
the report goes to a temporary file unless ``--out`` is given, so ``results/gpu.md`` keeps only real GPU runs.
Each finished epoch run and each agreement check prints one line to stdout.
"""

from __future__ import annotations

import copy
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from recbole_cmi.benchmark.measure import (
    REPORT_END_MARKER,
    BuiltOnce,
    _mb,
    _say,
    _synchronize,
    say_finished,
    write_report,
)
from recbole_cmi.cli import OneLineArgumentParser, run_cli
from recbole_cmi.data.synthetic import SyntheticConfig, generate, write_atomic
from recbole_cmi.machine import describe_environment, machine_text, versions_text
from recbole_cmi.markdown import markdown_table
from recbole_cmi.memory import PeakMemory

DATASET = "microlens_synthetic"
DEFAULT_MODELS = ("CMI", "SASRec", "ComiRecSA")
MICROLENS = {"interactions": 332_730, "items": 14_079}  # MicroLens-50k after the converter's 5-core filter
DRY_RUN = {"interactions": 6_000, "items": 600}
METRICS = ("recall@20", "ndcg@20")
TOP_K = 20


def settings(args, data_path: str, gpu_id: str, amp: bool) -> dict:
    return {
        "data_path": data_path,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": 20,  # as properties/dataset/microlens.yaml
        "user_inter_num_interval": "[5,inf)",
        "train_batch_size": args.batch_size,
        "eval_batch_size": args.eval_batch_size,
        "embedding_size": args.d,
        "hidden_size": args.d,
        "epochs": 1,
        "gpu_id": gpu_id,
        "enable_amp": amp,
        "seed": args.seed,
        "reproducibility": True,
        "state": "ERROR",
        "show_progress": False,
        "log_wandb": False,
        "save_dataloaders": False,
        "exclude_history_items": True,
        "checkpoint_dir": os.path.join(data_path, "saved"),
        "metrics": ["Recall", "NDCG"],
        "topk": [20],
        "valid_metric": "NDCG@20",
    }


def generate_data(args, folder: Path) -> dict:
    cfg = SyntheticConfig(
        n_users=1, n_items=args.items, n_categories=16, min_len=5, max_len=min(166, args.items // 2), mean_len=7.2
    )
    start = time.perf_counter()
    data = generate(cfg, fast=True, n_interactions=args.interactions)
    write_atomic(data, folder / DATASET, DATASET)
    return {"interactions": len(data.users), "users": int(data.users.max()), "seconds": time.perf_counter() - start}


def train_and_evaluate(name: str, dataset, args, data_path: str, gpu_id: str, amp: bool) -> dict:
    """One epoch and one full-sort test evaluation; the trained trainer comes back for the agreement checks."""
    from recbole_cmi.pipeline import build_pipeline

    config_dict = settings(args, data_path, gpu_id, amp)
    pipeline = build_pipeline(name, DATASET, config_dict=config_dict, data=dataset, log=False)
    model, trainer, device = pipeline.model, pipeline.trainer, pipeline.config["device"]
    train_data, test_data = pipeline.train_data, pipeline.test_data
    if hasattr(train_data, "bind_model"):  # what fit does: this benchmark trains an epoch without it
        train_data.bind_model(model)
    row = {"model": name, "device": device.type, "amp": amp, "train_rows": len(train_data._dataset)}
    with PeakMemory(device) as train_memory:
        start = time.perf_counter()
        trainer._train_epoch(train_data, 0, show_progress=False)
        _synchronize(device)
        row["epoch_seconds"] = time.perf_counter() - start
    with PeakMemory(device) as eval_memory:
        start = time.perf_counter()
        result = trainer.evaluate(test_data, load_best_model=False)
        _synchronize(device)
        row["eval_seconds"] = time.perf_counter() - start
    row["eval_users"] = test_data.sample_size
    row["train_cuda_peak"], row["eval_cuda_peak"] = train_memory.cuda_peak_delta, eval_memory.cuda_peak_delta
    row.update({metric: float(result[metric]) for metric in METRICS})
    trainer.tensorboard.close()
    return {"row": row, "trainer": trainer, "test_data": test_data}


def full_sort_scores(trainer, test_data, users: int, device, autocast: bool = False):
    """The trainer's full-sort scores (history and padding masked) of the first ``users`` test users on
    ``device``, from a copy of its model; float32 on the CPU."""
    import torch

    saved = trainer.model, trainer.device
    model = copy.deepcopy(trainer.model).to(device)
    model.device = device  # RecBole models keep the device for tensors they create
    trainer.model, trainer.device = model, device
    model.eval()
    chunks, seen = [], 0
    try:
        with torch.no_grad():
            for batched_data in test_data:
                with torch.autocast(device.type, enabled=autocast):
                    _, scores, _, _ = trainer._full_sort_batch_eval(batched_data)
                chunks.append(scores.float().cpu())
                seen += len(scores)
                if seen >= users:
                    break
    finally:
        trainer.model, trainer.device = saved
    return torch.cat(chunks)[:users]


def agreement(a, b) -> dict:
    """Largest score difference (finite entries) and mean overlap of the top-20 lists of two score matrices."""
    import torch

    finite = torch.isfinite(a) & torch.isfinite(b)
    max_diff = float((a - b).abs()[finite].max()) if finite.any() else 0.0
    top_a, top_b = a.topk(TOP_K, dim=1).indices, b.topk(TOP_K, dim=1).indices
    overlap = (top_a.unsqueeze(2) == top_b.unsqueeze(1)).any(dim=2).float().mean()
    return {"max_score_diff": max_diff, "top20_overlap": float(overlap)}


def ddp_two_gpus(name: str, args, data_path: str) -> dict:
    from recbole_cmi.quick_start import run_distributed

    # The one-GPU runs' Configs set CUDA_VISIBLE_DEVICES=0 in this process; the spawned ranks inherit it.
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = "0,1"
    start = time.perf_counter()
    try:
        result = run_distributed(name, DATASET, config_dict=settings(args, data_path, "0,1", False), nproc=2)
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    return {
        "model": name,
        "wall_seconds": time.perf_counter() - start,
        **{metric: float(result["test_result"][metric]) for metric in METRICS},
    }


def run_check(args) -> dict:
    import torch

    from recbole_cmi.config import Config
    from recbole_cmi.pipeline import create_dataset

    cuda = torch.cuda.is_available()
    gpu_id = "0" if cuda else ""
    device = torch.device("cuda:0" if cuda else "cpu")
    outcome = {"cuda": cuda, "gpus": torch.cuda.device_count() if cuda else 0, "rows": [], "agreement": [], "ddp": None}
    with tempfile.TemporaryDirectory(prefix="recbole_cmi_gpu_") as tmp:
        outcome["data"] = generate_data(args, Path(tmp))
        config = Config(args.models[0], DATASET, config_dict=settings(args, tmp, gpu_id, False), read_argv=False)
        start = time.perf_counter()
        dataset = BuiltOnce(create_dataset(config))
        dataset.build()
        outcome["data"]["load_seconds"] = time.perf_counter() - start
        _say(f"data: {outcome['data']}")
        for name in args.models:
            runs = {}
            for amp in (False, True):
                try:
                    runs[amp] = train_and_evaluate(name, dataset, args, tmp, gpu_id, amp)
                    outcome["rows"].append(runs[amp]["row"])
                except (RuntimeError, ValueError) as err:  # e.g. an op without float16 support: report, go on
                    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
                    outcome["rows"].append({"model": name, "amp": amp, "error": f"{type(err).__name__}: {first}"})
                say_finished(_run_line(outcome["rows"][-1]))
            if False in runs:
                trainer, test_data = runs[False]["trainer"], runs[False]["test_data"]
                reference = full_sort_scores(trainer, test_data, args.agree_users, device)
                on_cpu = full_sort_scores(trainer, test_data, args.agree_users, torch.device("cpu"))
                autocast = full_sort_scores(trainer, test_data, args.agree_users, device, autocast=True)
                outcome["agreement"].append(
                    {"model": name, "cpu": agreement(reference, on_cpu), "autocast": agreement(reference, autocast)}
                )
                say_finished(_agreement_line(outcome["agreement"][-1]))
        if outcome["gpus"] >= 2:
            outcome["ddp"] = ddp_two_gpus("SASRec", args, tmp)
            ddp = outcome["ddp"]
            say_finished(
                f"[gpu] {ddp['model']} DDP on 2 GPUs: {ddp['wall_seconds']:.1f} s, "
                + ", ".join(f"test {m} {ddp[m]:.4f}" for m in METRICS)
            )
    return outcome


def _run_line(row: dict) -> str:
    """One finished (or failed) epoch run in a line."""
    head = f"[gpu] {row['model']} AMP {'on' if row['amp'] else 'off'}"
    if "error" in row:
        return f"{head}: failed: {row['error']}"
    return (
        f"{head}: {_num(row['epoch_seconds'])} s/epoch, eval {_num(_users_per_s(row), 0)} users/s, peak CUDA "
        f"{_mb(row['train_cuda_peak'])} / {_mb(row['eval_cuda_peak'])} MB, "
        + ", ".join(f"test {m} {row[m]:.4f}" for m in METRICS)
    )


def _agreement_line(item: dict) -> str:
    cpu, amp = item["cpu"], item["autocast"]
    return (
        f"[gpu] {item['model']} agreement: CPU vs CUDA max diff {cpu['max_score_diff']:.2e}, top-20 overlap "
        f"{cpu['top20_overlap']:.4f}; autocast vs fp32 max diff {amp['max_score_diff']:.2e}, top-20 overlap "
        f"{amp['top20_overlap']:.4f}"
    )


def _users_per_s(row: dict) -> float | None:
    return row["eval_users"] / row["eval_seconds"] if row["eval_seconds"] else None


def _num(value, digits=1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def format_report(outcome: dict, args, environment: dict, command: str, wall: float) -> str:
    """The report; ``environment``: :func:`recbole_cmi.machine.describe_environment`'s dict."""
    cuda = outcome["cuda"]
    machine = environment["machine"]
    data = outcome["data"]
    lines = [
        "# GPU check" if cuda else "# GPU check: dry run on the CPU (no CUDA device found)",
        "",
        f"Generated by `{command}` in {wall:,.0f} s.",
        "",
        f"- device: {machine['gpu'] or 'none (CPU: ' + machine['cpu'] + ')'}; GPUs: {outcome['gpus']}",
        f"- machine: {machine_text(machine)}",
        f"- versions: {versions_text(environment['versions'])}",
        f"- data: synthetic, {data['interactions']:,} interactions, {data['users']:,} users, {args.items:,} items "
        f"(generated in {data['seconds']:.1f} s, loaded and split by RecBole in {data['load_seconds']:.1f} s); "
        f"batch {args.batch_size}, d = {args.d}, history <= 20, seed {args.seed}",
        "",
    ]
    if not cuda:
        lines += [
            "No CUDA device: this is the dry run on the CPU with small data. 'AMP' is bfloat16 autocast on the CPU",
            "and the 'CUDA' side of the agreement table is the CPU too. The numbers show that the check runs, not",
            "how fast a GPU is.",
            "",
        ]
    lines.append(_timings_table(outcome))
    lines += _agreement_section(outcome, args)
    lines.append(_ddp_line(outcome))
    return "\n".join(lines) + "\n"


def _timings_table(outcome: dict) -> str:
    """Per model and AMP setting: seconds per epoch, evaluation speed, peak CUDA memory, test metrics."""
    header = ["model", "AMP", "s/epoch", "train rows", "eval users/s", "peak CUDA MB (train / eval)"]
    header += [f"test {m}" for m in METRICS]
    rows = []
    for row in outcome["rows"]:
        if "error" in row:
            rows.append([row["model"], "on" if row["amp"] else "off", f"failed: {row['error']}"])
            continue
        rows.append(
            [row["model"], "on" if row["amp"] else "off", _num(row["epoch_seconds"]), f"{row['train_rows']:,}"]
            + [_num(_users_per_s(row), 0), f"{_mb(row['train_cuda_peak'])} / {_mb(row['eval_cuda_peak'])}"]
            + [f"{row[m]:.4f}" for m in METRICS]
        )
    return markdown_table(header, rows)


def _agreement_section(outcome: dict, args) -> list[str]:
    """CPU against CUDA, and autocast against fp32: the largest score difference and the top-20 overlap."""
    lines = [
        "",
        f"Agreement of the fp32-trained model's full-sort scores on the first {args.agree_users} test users "
        "(same weights; max |score difference| over finite scores, mean overlap of the top-20 lists):",
        "",
    ]
    header = ["model", "CPU vs CUDA: max diff", "CPU vs CUDA: top-20 overlap", "autocast vs fp32: max diff"]
    header += ["autocast vs fp32: top-20 overlap"]
    rows = []
    for item in outcome["agreement"]:
        cpu, amp = item["cpu"], item["autocast"]
        rows.append(
            [item["model"], f"{cpu['max_score_diff']:.2e}", f"{cpu['top20_overlap']:.4f}"]
            + [f"{amp['max_score_diff']:.2e}", f"{amp['top20_overlap']:.4f}"]
        )
    return lines + [markdown_table(header, rows), ""]


def _ddp_line(outcome: dict) -> str:
    """The two-GPU DDP epoch against the one-GPU run, or why it was not run."""
    if not outcome["ddp"]:
        return f"Two-GPU DDP: not run ({outcome['gpus']} GPU(s) here; it needs 2)."
    ddp = outcome["ddp"]
    one = next((r for r in outcome["rows"] if r["model"] == ddp["model"] and not r["amp"] and "error" not in r), {})
    return (
        f"Two-GPU DDP ({ddp['model']}, nccl, one epoch, wall time with data loading in each process): "
        f"{ddp['wall_seconds']:.1f} s; test "
        + ", ".join(f"{m} {ddp[m]:.4f} (one GPU {one.get(m, float('nan')):.4f})" for m in METRICS)
    )


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(prog="python -m recbole_cmi benchmark gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated models")
    parser.add_argument("--interactions", type=int, default=None, help="default: MicroLens-sized on CUDA, small on CPU")
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--d", type=int, default=64, help="embedding_size = hidden_size")
    parser.add_argument("--agree-users", type=int, default=512, help="test users in the agreement checks")
    parser.add_argument("--seed", type=int, default=2022)
    parser.add_argument("--out", default=None, help="default: results/gpu.md on CUDA, a temporary file on the CPU")
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)

    def run():
        import torch

        args.models = [m.strip() for m in args.models.split(",") if m.strip()]
        cuda = torch.cuda.is_available()
        if not cuda:
            _say("no CUDA device found (torch.cuda.is_available() is False): dry run on the CPU with small data")
        size = MICROLENS if cuda else DRY_RUN
        args.interactions = args.interactions or size["interactions"]
        args.items = args.items or size["items"]
        out = Path(args.out) if args.out else None
        if out is None:
            out = Path("results/gpu.md") if cuda else Path(tempfile.gettempdir()) / "recbole_cmi_gpu_dry_run.md"
        start = time.perf_counter()
        outcome = run_check(args)
        environment = describe_environment(gpu=cuda)
        command = "python -m recbole_cmi.benchmark gpu " + " ".join(shlex.quote(a) for a in argv)
        text = format_report(outcome, args, environment, command.strip(), time.perf_counter() - start)
        write_report(out, text)
        print(text.split(REPORT_END_MARKER)[0])
        print(f"report: {out}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
