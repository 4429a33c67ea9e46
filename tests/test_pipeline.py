"""recbole_cmi.pipeline's one pipeline builder and checkpoint evaluator, and the trainer's epoch observer."""

from __future__ import annotations

import pytest
import torch

from recbole_cmi.errors import ConfigValueError
from recbole_cmi.pipeline import build_pipeline, create_dataset, evaluate_checkpoint, prepare, restore_pipeline
from recbole_cmi.quick_start import run_recbole_cmi
from recbole_cmi.trainer import EpochObserver, EpochObserverMixin, Trainer, get_trainer

# Every model the benchmarks and the paper's comparison train (docs/baselines.md).
MODELS = ["SASRec", "GRU4Rec", "ComiRecSA", "ComiRecDR", "CL4SRec", "CMI"]


class Recorder(EpochObserver):
    def __init__(self):
        self.train, self.valid = [], []

    def on_train_epoch(self, epoch_idx, seconds):
        self.train.append((epoch_idx, seconds))

    def on_validation(self, epoch_idx, seconds, valid_score, valid_result):
        self.valid.append((epoch_idx, seconds, valid_score, valid_result))


def _same_weights(a, b) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.e2e
@pytest.mark.parametrize("model", MODELS)
def test_every_models_trainer_reports_each_epoch_and_validation_to_its_observer(model, tiny_config):
    pipeline = build_pipeline(model, "tiny", config_dict=tiny_config(epochs=3, stopping_step=10), log=False)
    trainer = pipeline.trainer
    assert isinstance(trainer, EpochObserverMixin) and trainer.model is pipeline.model
    trainer.epoch_observer = recorder = Recorder()
    best_score, best_result = trainer.fit(pipeline.train_data, pipeline.valid_data, saved=False)
    assert [epoch for epoch, _ in recorder.train] == [0, 1, 2]
    assert [epoch for epoch, *_ in recorder.valid] == [0, 1, 2]
    assert all(seconds > 0 for _, seconds in recorder.train) and all(v[1] > 0 for v in recorder.valid)
    metric = pipeline.config["valid_metric"].lower()
    for _, _, score, result in recorder.valid:
        assert score == result[metric]
    scores = [score for _, _, score, _ in recorder.valid]
    best = max(range(3), key=lambda i: (scores[i], i))  # RecBole: a tie moves the best epoch forward
    assert best_score == scores[best] and best_result == recorder.valid[best][3]


@pytest.mark.parametrize("core_trainer_model", ["NCL", "S3Rec", "RecVAE", "KGAT"])
def test_core_models_own_trainers_have_the_observer_hook_too(core_trainer_model):
    trainer_class = get_trainer(None, core_trainer_model)
    assert trainer_class is not Trainer and issubclass(trainer_class, EpochObserverMixin)


def test_the_observer_gets_the_seconds_of_the_epoch_alone(monkeypatch):
    import recbole_cmi.trainer as trainer_module

    clock = iter([10.0, 12.5, 20.0, 20.25])
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: next(clock))

    class Core:
        def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
            return 0.7

        def _valid_epoch(self, valid_data, show_progress=False):
            return 0.3, {"ndcg@10": 0.3}

    class Observed(EpochObserverMixin, Core):
        pass

    trainer = Observed()
    assert trainer._train_epoch(None, 4) == 0.7  # no observer: nothing timed, the clock is not read
    trainer.epoch_observer = recorder = Recorder()
    assert trainer._train_epoch(None, 5, show_progress=True) == 0.7
    assert trainer._valid_epoch(None) == (0.3, {"ndcg@10": 0.3})
    assert recorder.train == [(5, 2.5)]
    assert recorder.valid == [(5, 0.25, 0.3, {"ndcg@10": 0.3})]


def test_the_stages_build_what_prepare_builds(tiny_config):
    config, dataset, loaders, model = prepare("SASRec", "tiny", config_dict=tiny_config())
    data_only = build_pipeline("SASRec", "tiny", config_dict=tiny_config(), log=False, until="data")
    assert data_only.model is None and data_only.trainer is None
    assert [len(loader._dataset) for loader in data_only.loaders] == [len(loader._dataset) for loader in loaders]
    assert _same_weights(data_only.build_model(), model)  # seeded again before the model, as prepare does
    assert isinstance(data_only.build_trainer(), Trainer) and data_only.trainer.model is data_only.model


def test_an_already_created_dataset_gives_the_same_pipelines(tiny_config):
    from recbole_cmi.benchmark.measure import BuiltOnce

    config = build_pipeline("GRU4Rec", "tiny", config_dict=tiny_config(), log=False, until="data").config
    shared = BuiltOnce(create_dataset(config))  # as the speed benchmarks share one dataset between models
    for model in ("GRU4Rec", "SASRec"):
        by_name = build_pipeline(model, "tiny", config_dict=tiny_config(), log=False)
        reused = build_pipeline(model, "tiny", config_dict=tiny_config(), data=shared, log=False)
        assert reused.dataset is shared
        assert [len(x._dataset) for x in reused.loaders] == [len(x._dataset) for x in by_name.loaders]
        assert _same_weights(reused.model, by_name.model)


def test_bad_stage_and_split_names_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="until='trained'"):
        build_pipeline("SASRec", "tiny", until="trained")
    missing = tmp_path / "no.pth"  # never opened: the split is checked first
    with pytest.raises(ConfigValueError, match="splits='train'"):
        evaluate_checkpoint(missing, splits="train")
    with pytest.raises(ConfigValueError, match=r"splits=\(\)"):
        evaluate_checkpoint(missing, splits=())


@pytest.mark.e2e
def test_evaluate_checkpoint_gives_the_runs_best_validation_and_test_results(tiny_config):
    result = run_recbole_cmi("SASRec", "tiny", config_dict=tiny_config(epochs=2))
    model_file = result["saved_model_file"]
    valid, test = evaluate_checkpoint(model_file, splits=("valid", "test"))
    assert valid == pytest.approx(dict(result["best_valid_result"]))
    assert test == pytest.approx(dict(result["test_result"]))
    assert evaluate_checkpoint(model_file) == test and evaluate_checkpoint(model_file, splits="valid") == valid
    (only_test,) = evaluate_checkpoint(model_file, splits=["test"])
    assert only_test == test

    restored = restore_pipeline(model_file)
    assert restored.trainer is None and restored.config["model"] == "SASRec"
    assert str(restored.config["device"]) == "cpu"
    saved = torch.load(model_file, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(restored.model.state_dict()[k], v) for k, v in saved.items())
    assert repr(restored) == "Pipeline(SASRec on tiny: data, model)"
