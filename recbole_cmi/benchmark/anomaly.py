"""What autograd anomaly mode costs: one SASRec training epoch with it on vs off, same process.

Importing RecBole's sequential models turns anomaly mode on for the whole process (RecBole's
``sine.py``); recbole_cmi switches it off (``recbole_cmi.compat``). This measures the difference
on the bundled ``micro_video`` data, restricted to its first ``--users`` users so that it runs in
about a minute on two CPU cores::

    python -m recbole_cmi benchmark anomaly                  # 300 users, SASRec defaults
    python -m recbole_cmi benchmark anomaly --users 0        # all 2000 users

After one untimed warm-up epoch, epochs alternate off/on ``--repeats`` times (the same model keeps
training, so every timed epoch does the same work); each timed epoch prints one line as it ends, then the
median of each mode is printed.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from recbole_cmi.benchmark.measure import say_finished
from recbole_cmi.cli import OneLineArgumentParser, run_cli
from recbole_cmi.paths import bundled_dataset_dir


def subset(users: int, root: Path) -> Path:
    """Copy the first ``users`` users of micro_video (all if 0) into ``root/micro_video``."""
    source = bundled_dataset_dir() / "micro_video" / "micro_video.inter"
    lines = source.read_text(encoding="utf-8").splitlines()
    keep = None if users <= 0 else {f"u{i}" for i in range(1, users + 1)}
    rows = [line for line in lines[1:] if keep is None or line.split("\t", 1)[0] in keep]
    target = root / "micro_video"
    target.mkdir(parents=True)
    (target / "micro_video.inter").write_text("\n".join([lines[0], *rows]) + "\n", encoding="utf-8")
    return root


def main(argv=None) -> int:
    parser = OneLineArgumentParser(prog="python -m recbole_cmi benchmark anomaly", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=300, help="first N users of micro_video (0: all)")
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs per mode")
    parser.add_argument("--batch_size", type=int, default=256)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1:
        parser.error(f"--repeats and --batch_size must be >= 1, got {args.repeats} and {args.batch_size}")
    return run_cli(lambda: measure(args))


def measure(args) -> int:
    """Time the epochs (see the module docstring) and print the medians."""
    import torch

    from recbole_cmi.pipeline import build_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        data_root = subset(args.users, Path(tmp) / "data")
        pipeline = build_pipeline(
            "SASRec",
            "micro_video",
            config_dict={
                "data_path": str(data_root),
                "checkpoint_dir": str(Path(tmp) / "saved"),
                "train_batch_size": args.batch_size,
                "gpu_id": "",
                "state": "ERROR",
                "show_progress": False,
            },
        )
        config, dataset, train_data, trainer = pipeline.config, pipeline.dataset, pipeline.train_data, pipeline.trainer
        torch.autograd.set_detect_anomaly(False)
        trainer._train_epoch(train_data, 0)  # warm-up, untimed
        times = {False: [], True: []}
        epoch = 1
        for _ in range(args.repeats):
            for mode in (False, True):
                torch.autograd.set_detect_anomaly(mode)
                start = time.perf_counter()
                trainer._train_epoch(train_data, epoch)
                times[mode].append(time.perf_counter() - start)
                say_finished(
                    f"[anomaly] epoch {epoch}, anomaly mode {'on' if mode else 'off'}: {times[mode][-1]:.2f} s"
                )
                epoch += 1
        torch.autograd.set_detect_anomaly(False)

    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"SASRec (hidden {config['hidden_size']}, {config['n_layers']} layers, max length "
        f"{config['MAX_ITEM_LIST_LENGTH']}) on micro_video, {dataset.user_num - 1} users, "
        f"{len(train_data)} batches of {args.batch_size}, torch threads {torch.get_num_threads()}"
    )
    print(f"anomaly mode off: {off:.2f} s/epoch  (runs: {', '.join(f'{t:.2f}' for t in times[False])})")
    print(f"anomaly mode on:  {on:.2f} s/epoch  (runs: {', '.join(f'{t:.2f}' for t in times[True])})")
    print(f"on/off: {on / off:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
