"""The Ray Tune objects of a search: the trainable (:func:`recbole_cmi.tune.trial.run_trial` with its resources),
the Tuner (new, or restored by ``--resume``), the ASHA scheduler and the search algorithm.
"""

from __future__ import annotations

from pathlib import Path

from recbole_cmi.errors import ConfigValueError
from recbole_cmi.tune.space import HyperParam, distinct_choice_points, to_search_space
from recbole_cmi.tune.trial import best_key, run_trial


def make_trainable(plan: dict, cpus_per_trial: float, gpus_per_trial: float):
    """:func:`run_trial` with the part of the plan a trial reads, and the CPUs and GPUs Ray reserves for it."""
    from ray import tune

    trial_plan = {key: plan[key] for key in ("model", "dataset", "fixed", "metric", "mode", "stopping_step")} | {
        "cpus_per_trial": cpus_per_trial
    }
    return tune.with_resources(
        tune.with_parameters(run_trial, plan=trial_plan), {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
    )


def new_tuner(plan: dict, params: list[HyperParam], settings, trainable, output: Path, storage=None):
    """A new search's Tuner (``settings``: its :class:`recbole_cmi.tune.search.SearchSettings`), writing under
    ``<output>/ray`` (through ``storage`` on a cluster)."""
    from ray import tune

    metric = best_key(plan["metric"])
    search = settings.search
    num_samples = plan["settings"]["num_samples"]
    return tune.Tuner(
        trainable,
        param_space=to_search_space(params, grid=search == "grid"),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=plan["mode"],
            num_samples=num_samples,
            scheduler=_scheduler(settings, plan["max_t"]),
            search_alg=_search_algorithm(
                search,
                settings.search_seed,
                num_samples,
                settings.max_concurrent,
                distinct_choice_points(params, num_samples, settings.search_seed) if search == "random" else None,
            ),
            # Ray applies this to Searchers only; the variant generator takes its own limit.
            max_concurrent_trials=None if search in ("random", "grid") else settings.max_concurrent,
        ),
        run_config=tune.RunConfig(
            name=plan["experiment"],
            storage_path=str(output / "ray"),
            storage_filesystem=storage,
            verbose=settings.verbose,
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def restore_tuner(experiment_dir: Path, trainable, storage=None):
    """The Tuner of an interrupted search (``--resume``): unfinished trials continue, failed ones stay failed."""
    from ray import tune

    if not tune.Tuner.can_restore(str(experiment_dir), storage_filesystem=storage):
        raise ConfigValueError(f"cannot resume: no Ray Tune experiment state in {experiment_dir}")
    return tune.Tuner.restore(
        str(experiment_dir),
        trainable=trainable,
        resume_unfinished=True,
        resume_errored=False,
        storage_filesystem=storage,
    )


def _scheduler(settings, max_t: int):
    if settings.scheduler == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=max_t,
        grace_period=min(settings.grace_period, max_t),
        reduction_factor=settings.reduction_factor,
    )


def _search_algorithm(search: str, seed: int | None, num_samples: int, max_concurrent: int | None, points=None):
    if search in ("random", "grid"):
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # ``points`` (random search over choices only): the trials' distinct points, one per sample.
        return BasicVariantGenerator(
            random_state=seed, max_concurrent=max_concurrent or 0, points_to_evaluate=points or None
        )
    if search == "hyperopt":
        try:
            from ray.tune.search.hyperopt import HyperOptSearch
        except ImportError as err:
            raise ConfigValueError("--search=hyperopt needs hyperopt: pip install 'recbole_cmi[tune]'") from err
        # TPE models the results of the first trials; with few trials, start modelling after a third.
        return HyperOptSearch(random_state_seed=seed, n_initial_points=max(1, min(20, num_samples // 3)))
    try:
        import optuna  # noqa: F401
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as err:
        raise ConfigValueError("--search=optuna needs optuna: pip install 'recbole_cmi[tune]'") from err
    return OptunaSearch(seed=seed)
