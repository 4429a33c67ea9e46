"""The accuracy benchmark's convergence and ranking-convention reports: one checkpoint scored with history items
excluded and ranked (against a brute-force ranking, under loo and multi_target), the epoch-cap flag, the validation
curves and their chart, the paired t-test per convention (against the t distribution by hand), the tuned values."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
from conftest import unpadded

from recbole_cmi.benchmark import report_charts, report_runs, report_sections, report_stats
from recbole_cmi.benchmark.accuracy_worker import history_excluded, ranking_convention

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _trained(tiny_config, **overrides):
    """SASRec trained one epoch on the tiny dataset: (trainer, test loader)."""
    from recbole_cmi.pipeline import prepare
    from recbole_cmi.trainer import get_trainer

    config, _, (train, valid, test), model = prepare("SASRec", "tiny", None, tiny_config(**overrides))
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.fit(train, valid, saved=True, show_progress=False)
    return trainer, test


@torch.no_grad()
def _loo_recall_by_hand(model, loader, k: int, exclude: bool) -> float:
    """Recall@k (= Hit@k, one target per user) of a full sort, ranking every item but padding (and, with
    ``exclude``, the input history): a target's rank is the number of items scored strictly higher."""
    model.eval()
    hits = users = 0
    for interaction, _, positive_u, positive_i in loader:
        scores = model.full_sort_predict(interaction).view(len(interaction), -1).clone()
        scores[:, 0] = -math.inf
        if exclude:
            scores.scatter_(1, interaction["item_id_list"], -math.inf)
        target = scores[positive_u, positive_i]
        ranks = (scores[positive_u] > target[:, None]).sum(dim=1)
        hits += int((ranks < k).sum())
        users += len(positive_u)
    return hits / users


@pytest.mark.e2e
def test_loo_one_checkpoint_both_conventions_against_a_brute_force_ranking(tiny_config):
    trainer, test = _trained(tiny_config, exclude_history_items=True)
    assert history_excluded(trainer, test) is True
    excluded = trainer.evaluate(test, load_best_model=True)
    with ranking_convention(trainer, test, exclude=False):
        assert history_excluded(trainer, test) is False
        ranked = trainer.evaluate(test, load_best_model=False)
    assert history_excluded(trainer, test) is True  # restored
    assert trainer.evaluate(test, load_best_model=False) == excluded  # and the weights were not touched
    for k in (10, 20, 50):
        assert excluded[f"recall@{k}"] == pytest.approx(_loo_recall_by_hand(trainer.model, test, k, True), abs=1e-4)
        assert ranked[f"recall@{k}"] == pytest.approx(_loo_recall_by_hand(trainer.model, test, k, False), abs=1e-4)
        # No user sees an item twice here: history items are never targets, so ranking them only pushes targets down.
        assert ranked[f"recall@{k}"] <= excluded[f"recall@{k}"] and ranked[f"ndcg@{k}"] <= excluded[f"ndcg@{k}"]
    assert ranked != excluded  # the history items did take top-K places

    # The same training with exclusion off: its own numbers are the ranked ones, its other convention the excluded.
    plain, test_plain = _trained(tiny_config, exclude_history_items=False)
    assert history_excluded(plain, test_plain) is False
    assert plain.evaluate(test_plain, load_best_model=True) == ranked
    with ranking_convention(plain, test_plain, exclude=False):  # "switching" to the configured convention: a no-op
        assert plain.evaluate(test_plain, load_best_model=False) == ranked
    with ranking_convention(plain, test_plain, exclude=True):
        assert plain.evaluate(test_plain, load_best_model=False) == excluded


@pytest.mark.e2e
def test_multi_target_one_checkpoint_both_conventions_against_a_brute_force_ranking(tiny_config):
    from recbole_cmi.data.protocol import evaluate_multi_target

    trainer, test = _trained(tiny_config, eval_protocol="multi_target", metrics=["Recall", "NDCG"])
    assert history_excluded(trainer, test) is True  # the paper's protocol
    excluded = evaluate_multi_target(trainer.model, test)
    with ranking_convention(trainer, test, exclude=False):
        ranked = evaluate_multi_target(trainer.model, test)
    assert test.exclude_history is True and evaluate_multi_target(trainer.model, test) == excluded

    # By hand: per user, |top-K ∩ targets| / |targets|, ranking all items but padding (and the whole history).
    model = trainer.model.eval()
    by_hand = {(exclude, k): [] for exclude in (True, False) for k in (10, 20, 50)}
    with torch.no_grad():
        for start in range(test.n_users):
            batch = test.batch(start, start + 1)
            scores = model.full_sort_predict(batch.interaction).view(-1).clone()
            scores[0] = -math.inf
            history = test.split.history_of(start)
            targets = set(batch.targets[1].tolist())
            for exclude, k in by_hand:
                ranked_scores = scores.clone()
                if exclude:
                    ranked_scores[history] = -math.inf
                top = set(torch.topk(ranked_scores, k).indices.tolist())
                by_hand[exclude, k].append(len(top & targets) / len(targets))
    for (exclude, k), values in by_hand.items():
        result = excluded if exclude else ranked
        assert result[f"recall@{k}"] == pytest.approx(statistics.fmean(values), abs=1e-4), (exclude, k)
    assert all(ranked[key] <= excluded[key] for key in excluded) and ranked != excluded


# ---------------------------------------------------------------- the report, on hand-made rows


def test_a_run_hit_the_cap_when_it_trained_every_epoch_without_early_stopping():
    assert report_runs.hit_cap({"epochs": "10", "epochs_run": "10", "stopped_early": "False"})
    # Early stopping ended it at the very last epoch: converged, not capped.
    assert not report_runs.hit_cap({"epochs": "10", "epochs_run": "10", "stopped_early": "True"})
    assert not report_runs.hit_cap({"epochs": "10", "epochs_run": "6", "stopped_early": "True"})
    assert report_runs.hit_cap({"epochs": "4", "epochs_run": "4"})  # a row of an earlier version: the cap is enough
    assert not report_runs.hit_cap({"epochs": "", "epochs_run": "4"})
    rows = [
        {"model": "A", "seed": "1", "status": "ok", "epochs": "9", "epochs_run": "9", "stopped_early": "False"},
        {"model": "A", "seed": "2", "status": "ok", "epochs": "9", "epochs_run": "5", "stopped_early": "True"},
        {"model": "B", "seed": "1", "status": "ok", "epochs": "9", "epochs_run": "7", "stopped_early": "True"},
    ]
    a, b = report_stats.summarize(rows, ["A", "B"])
    assert (a.epochs_capped, b.epochs_capped) == (1, 0)
    table = unpadded("\n".join(report_sections.results_table([a, b], None, None)))
    assert "| epochs run | best epoch | at cap |" in table
    assert "| 7.0 ± 2.8 | – | **1/2 ⚠** |" in table and "| 7.0 | – | 0/1 |" in table


def curve_row(model, seed, train_s, ndcg, **extra):
    curve = {"epoch": list(range(1, len(ndcg) + 1)), "train_s": train_s, "ndcg@20": ndcg}
    row = {"model": model, "seed": str(seed), "status": "ok", "valid_curve": json.dumps(curve)}
    row.update(epochs="10", epochs_run=str(len(ndcg)), stopped_early="True")
    return {**row, **extra}


def test_the_curves_show_one_common_seed_per_model_and_when_each_was_best(tmp_path):
    rows = [
        curve_row("CMI", 2023, [10.0, 20.0, 30.0, 40.0], [0.10, 0.20, 0.20, 0.15]),
        curve_row("CMI", 2022, [11.0, 22.0, 33.0], [0.12, 0.18, 0.17]),
        curve_row("SASRec", 2023, [50.0, 100.0], [0.05, 0.09], stopped_early="False", epochs="2"),
        curve_row("SASRec", 2024, [50.0], [0.04]),
        {"model": "GRU4Rec", "seed": "2022", "status": "failed", "valid_curve": ""},
    ]
    picked = report_stats.curve_runs(rows, ["CMI", "SASRec", "GRU4Rec"])
    assert [(r["model"], r["seed"]) for r in picked] == [("CMI", "2023"), ("SASRec", "2023")]  # 2023: both have it
    # The best epoch: ties go to the later epoch, as RecBole's early stopping moves the checkpoint forward.
    assert report_runs.best_point(report_runs.run_curve(rows[0])) == (3, 30.0, 0.20)
    text = unpadded("\n".join(report_sections.curves_section(rows, ["CMI", "SASRec", "GRU4Rec"], "loo-curves.png")))
    assert "![validation curves](loo-curves.png)" in text
    assert "| CMI | 2023 | 4 | 3 | 0.2000 | 30.0 | 40.0 | early stopping |" in text
    assert "| SASRec | 2023 | 2 | 2 | 0.0900 | 100.0 | 100.0 | **epoch cap ⚠** |" in text
    assert report_charts.write_curves_chart(tmp_path / "loo-curves.png", picked, "tiny") is None
    data = (tmp_path / "loo-curves.png").read_bytes()
    assert data[:8] == PNG_SIGNATURE and int.from_bytes(data[16:20], "big") == 700  # 7 inches at 100 dpi
    assert [p.name for p in tmp_path.iterdir()] == ["loo-curves.png"]  # written atomically
    # A curve under multi_target also records the validation metric; the best epoch follows it, not NDCG@20.
    mt = {"epoch": [1, 2], "train_s": [5.0, 10.0], "ndcg@20": [0.3, 0.2], "recall@50": [0.5, 0.6]}
    assert report_runs.best_point(mt) == (2, 10.0, 0.2)
    assert (
        report_stats.curve_runs([{"model": "A", "seed": "1", "status": "ok", "valid_curve": "not json"}], ["A"]) == []
    )


def convention_rows():
    """CMI and SASRec, seeds 2022-2024; loo rows excluded history (test_*), ranked it in alt_test_*."""
    values = {  # (excluded, ranked) recall@20 per seed
        "CMI": [(0.30, 0.20), (0.32, 0.19), (0.35, 0.22)],
        "SASRec": [(0.28, 0.21), (0.29, 0.23), (0.30, 0.22)],
    }
    rows = []
    for model, pairs in values.items():
        for seed, (excl, ranked) in zip((2022, 2023, 2024), pairs):
            rows.append({"model": model, "seed": str(seed), "status": "ok", "protocol": "loo",
                         "history_excluded": "True", "test_recall@20": excl, "test_ndcg@20": excl / 2,
                         "alt_test_recall@20": ranked, "alt_test_ndcg@20": ranked / 2})  # fmt: skip
    return rows, values


def test_both_conventions_and_their_paired_t_tests_match_the_t_distribution_by_hand():
    from scipy.stats import t as student_t

    rows, values = convention_rows()
    # A multi_target row of an earlier version (no history_excluded) was always scored with history excluded.
    assert report_runs.excludes_history({"protocol": "multi_target", "exclude_history_items": "False"}) is True
    assert report_runs.excludes_history({"protocol": "loo", "exclude_history_items": "False"}) is False
    ranked = report_runs.convention_rows(rows, exclude=False)
    assert [r["test_recall@20"] for r in ranked[:3]] == [0.20, 0.19, 0.22]
    assert all(not k.startswith("alt_") for r in ranked for k in r)
    text = unpadded("\n".join(report_sections.conventions_section(rows, ["CMI", "SASRec"])))
    assert "| model | excl. Recall@20 | excl. NDCG@20 | ranked Recall@20 | ranked NDCG@20 |" in text
    cmi_excl = [e for e, _ in values["CMI"]]
    assert f"| CMI | **{statistics.fmean(cmi_excl):.4f} ± {statistics.stdev(cmi_excl):.4f}** |" in text
    for label, index in (("excl.", 0), ("ranked", 1)):
        diffs = [c[index] - s[index] for c, s in zip(values["CMI"], values["SASRec"])]
        t = statistics.fmean(diffs) / (statistics.stdev(diffs) / math.sqrt(3))
        p = 2 * student_t.sf(abs(t), df=2)
        assert f"{statistics.fmean(diffs):+.4f} | 3 | {report_stats.format_p(p)} |" in text, label
    line = next(line for line in text.splitlines() if line.startswith("| SASRec | Recall@20 |"))
    assert line.count("| 3 |") == 2  # one paired test per convention
    scored_one_way = [{k: v for k, v in r.items() if not k.startswith("alt_")} for r in rows]
    assert report_sections.conventions_section(scored_one_way, ["CMI", "SASRec"]) == []


def test_the_tuned_values_of_every_model_are_listed():
    rows = [
        {"model": "CMI", "status": "ok", "tuned_file": "properties/tuned/x/CMI.yaml",
         "tuned_values": json.dumps({"learning_rate": 0.004, "num_interest": 2})},
        {"model": "CMI", "status": "ok", "tuned_file": "properties/tuned/x/CMI.yaml",
         "tuned_values": json.dumps({"learning_rate": 0.004, "num_interest": 2})},
        {"model": "SASRec", "status": "ok", "tuned_file": "", "tuned_values": ""},
    ]  # fmt: skip
    text = unpadded("\n".join(report_sections.tuned_section(rows, ["CMI", "SASRec"], None)))
    assert "| CMI | properties/tuned/x/CMI.yaml | learning_rate: 0.004, num_interest: 2 | – | 2 |" in text  # no header
    assert "| SASRec | – | – (published defaults) | – | 1 |" in text
    assert "`--tuned`" in "\n".join(report_sections.tuned_section(rows, ["CMI"], "tuned/x"))
