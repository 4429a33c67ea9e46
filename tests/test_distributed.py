"""Multi-process (DDP) training on the CPU: two gloo processes on the tiny dataset (recbole_cmi.distributed)."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.multiprocessing as mp

from recbole_cmi.data.augmentation import view_fields
from recbole_cmi.data.sampler import SHARED_NEG_FIELD
from recbole_cmi.distributed import find_free_port, uses_cpu_distributed
from recbole_cmi.errors import ConfigValueError, DatasetError
from recbole_cmi.pipeline import evaluate_checkpoint
from recbole_cmi.quick_start import run_distributed

METRICS = ("recall@10", "ndcg@10", "hit@10", "mrr@10")


@pytest.mark.e2e
def test_run_distributed_trains_with_two_cpu_processes(tiny_config, tmp_path):
    result = run_distributed("CMI", "tiny", config_dict=tiny_config(), nproc=2)

    config = result["config"]
    assert config["world_size"] == 2 and config["local_rank"] == 0 and config["single_spec"] is False
    assert config["device"].type == "cpu"
    for split in ("best_valid_result", "test_result"):
        metrics = result[split]
        for name in METRICS:
            assert 0.0 <= metrics[name] <= 1.0, (split, name, metrics[name])
        assert metrics["hit@50"] > 0  # 80 items, top 50: a trained model finds some targets
    assert os.path.isfile(result["saved_model_file"])  # rank 0 wrote it, and both ranks loaded it for the test

    # The checkpoint of a distributed run evaluates in one process (RecBole #2063), to the same metrics up to
    # the users that RecBole's DistributedSampler repeats to even out the processes' shares.
    single = evaluate_checkpoint(result["saved_model_file"])
    for name in METRICS:
        assert abs(single[name] - result["test_result"][name]) <= 0.02, name


@pytest.mark.e2e
def test_a_user_error_in_the_workers_is_raised_as_itself(tiny_config):
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        run_distributed("CMI", "nope", config_dict=tiny_config(), nproc=2)


@pytest.mark.e2e
def test_sparse_item_updates_are_refused_in_a_distributed_run(tiny_config):
    with pytest.raises(ConfigValueError, match="sparse_item_updates: True runs in one process only"):
        run_distributed("CMI", "tiny", config_dict=tiny_config(sparse_item_updates=True), nproc=2)


def test_cpu_backend_is_chosen_without_a_gpu():
    assert uses_cpu_distributed({"local_rank": 0, "gpu_id": ""})
    assert not uses_cpu_distributed({"gpu_id": ""})  # single process: RecBole's own set-up
    if not torch.cuda.is_available():
        assert uses_cpu_distributed({"local_rank": 1, "gpu_id": "0,1"})


def test_a_distributed_config_without_rendezvous_is_a_clear_error(tiny_config):
    from recbole_cmi.config import Config

    with pytest.raises(ConfigValueError, match="world_size, ip, port"):
        Config("CMI", "tiny", config_dict=tiny_config(local_rank=0), read_argv=False)


# --------------------------------------------------------------------------- gradients under DDP
class _OneBatch:
    """What RecBole's ``_train_epoch`` needs from a loader: iteration and ``shuffle``."""

    shuffle = False

    def __init__(self, interaction):
        self.interaction = interaction

    def __iter__(self):
        return iter([self.interaction])


def _grads(model) -> dict[str, torch.Tensor]:
    return {
        name: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for name, p in model.named_parameters()
    }


def _gradient_worker(rank, folder, port, settings):
    """One of two gloo processes: its half of the batch, (1) manual all-reduce, (2) the Trainer's DDP step."""
    import torch.distributed as dist

    from recbole_cmi.config import Config
    from recbole_cmi.trainer import get_trainer

    config = Config(
        "CMI",
        "tiny",
        config_dict=dict(settings, local_rank=rank, world_size=2, ip="127.0.0.1", port=port, nproc=2, offset=0),
        read_argv=False,
    )
    try:
        model = torch.load(os.path.join(folder, "model.pt"), weights_only=False)
        half = torch.load(os.path.join(folder, f"half{rank}.pt"), weights_only=False)

        # (1) The definition: this process's loss on its rows, gradients summed over processes / 2.
        model.zero_grad()
        loss = sum(model.calculate_loss(half))
        loss.backward()
        manual = _grads(model)
        for grad in manual.values():
            dist.all_reduce(grad)
            grad /= 2

        # (2) What training does: our Trainer (DDP on the CPU) and RecBole's _train_epoch, whose reduce hooks
        # average the gradients across processes before the Adam step.
        model.zero_grad()
        trainer = get_trainer(config["MODEL_TYPE"], "CMI")(config, model)
        trainer._train_epoch(_OneBatch(half), epoch_idx=0)
        torch.save(
            {"loss": loss.item(), "manual": manual, "ddp": _grads(model)}, os.path.join(folder, f"rank{rank}.pt")
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.e2e
def test_ddp_gradients_are_those_of_the_mean_of_per_process_losses(tiny_config, tmp_path):
    """In-batch negatives and InfoNCE negatives are per process: DDP optimises the mean of the half-batch losses.

    Both CMI's sampled softmax (the negatives of every row of the batch) and its InfoNCE (the other rows'
    interests) depend on the whole batch, so this is the semantics to pin: each process's loss uses its
    local rows only, and the gradient is the average of the per-process gradients, which differs from the
    gradient of the loss over the global batch.
    """
    from recbole_cmi.pipeline import prepare

    settings = tiny_config(train_batch_size=32)
    config, _, (train_data, _, _), model = prepare("CMI", "tiny", config_dict=settings)
    batch = next(iter(train_data))  # with the hooks' views and shared negatives
    hook_fields = {SHARED_NEG_FIELD} | {field for pair in view_fields(config) for field in pair}
    assert hook_fields <= set(batch.interaction)
    n = len(batch)
    halves = [batch[torch.arange(0, n // 2)], batch[torch.arange(n // 2, n)]]
    model._project_to_sphere()  # done by every forward pass; once here, so all copies start on the sphere

    def loss_of(interaction):
        return sum(model.calculate_loss(interaction))

    def grads_of(*make_losses):
        # One backward pass per loss, accumulated: each forward pass re-projects the embeddings in place.
        model.zero_grad()
        for make_loss in make_losses:
            make_loss().backward()
        return _grads(model)

    reference_mean = grads_of(lambda: loss_of(halves[0]) / 2, lambda: loss_of(halves[1]) / 2)
    per_half = [grads_of(lambda h=h: loss_of(h)) for h in halves]
    reference_average = {name: (per_half[0][name] + per_half[1][name]) / 2 for name in per_half[0]}
    whole_batch = grads_of(lambda: loss_of(batch))
    with torch.no_grad():
        half_losses = [loss_of(h).item() for h in halves]
        whole_loss = loss_of(batch).item()

    torch.save(model, tmp_path / "model.pt")
    for rank, half in enumerate(halves):
        torch.save(half, tmp_path / f"half{rank}.pt")
    mp.spawn(_gradient_worker, args=(str(tmp_path), find_free_port(), settings), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]

    for rank, out in enumerate(ranks):
        assert math.isclose(out["loss"], half_losses[rank], rel_tol=1e-5), rank
        for name in reference_mean:
            torch.testing.assert_close(out["manual"][name], reference_mean[name], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(out["ddp"][name], reference_average[name], rtol=1e-4, atol=1e-6)
    # Not the global batch's loss: with half the rows each process sees half the negatives.
    assert not math.isclose(whole_loss, sum(half_losses) / 2, rel_tol=1e-3)
    embedding = "item_embedding.weight"
    assert (whole_batch[embedding] - reference_mean[embedding]).abs().max() > 1e-4


def test_a_finished_ddp_process_ends_with_its_code_and_its_output_flushed(tmp_path):
    # end_ddp_process skips the interpreter's finalisation (where torch's C++ threads can abort a finished
    # worker): what was printed without a newline and what went to a log file must still be there.
    import subprocess
    import sys

    log = tmp_path / "run.log"
    script = (
        "import logging, sys\n"
        "from recbole_cmi.distributed import end_ddp_process\n"
        f"logging.basicConfig(filename={str(log)!r}, level=logging.INFO)\n"
        "logging.getLogger().info('logged before the end')\n"
        "print('printed without a newline', end='')\n"
        "sys.stderr.write('error stream too')\n"
        "end_ddp_process(3)\n"
        "print('never reached')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3
    assert done.stdout == "printed without a newline"
    assert done.stderr == "error stream too"
    assert "logged before the end" in log.read_text()
