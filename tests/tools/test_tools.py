"""The tools on trained checkpoints: inspect, recommend, robustness (and its perturbation)."""

from __future__ import annotations

import collections
import csv
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_SETTINGS, call, flags, unpadded, verb
from recbole.data.interaction import Interaction

from recbole_cmi.errors import ConfigValueError
from recbole_cmi.model.cmi import CMI
from recbole_cmi.pipeline import evaluate_checkpoint, prepare
from recbole_cmi.quick_start import load_data_and_model, run_recbole_cmi
from recbole_cmi.tools.common import ToolError
from recbole_cmi.tools.inspect_numbers import pca_2d
from recbole_cmi.tools.robustness import assign_labels, parse_checkpoints, parse_lengths, parse_models
from recbole_cmi.tools.robustness_loaders import (
    bucket_label,
    count_rows,
    length_buckets,
    length_loader,
    perturb_histories,
)
from recbole_cmi.trainer import get_trainer

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("tools")


@pytest.fixture(scope="module")
def cmi_checkpoint(tiny_data_root, workdir):
    """One tiny CMI (m = 2, d = 8, 1 epoch) for the whole module."""
    settings = dict(TINY_SETTINGS, data_path=str(tiny_data_root), checkpoint_dir=str(workdir / "saved"))
    settings.update(num_interest=2, embedding_size=8, epochs=1)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        return run_recbole_cmi("CMI", "tiny", config_dict=settings, saved=True)["saved_model_file"]
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def robustness_run(tiny_data_root, workdir, cmi_checkpoint):
    """SASRec trained by the command, the CMI checkpoint given, and a model that fails; p in {0, 0.5}."""
    out = workdir / "robustness"
    settings = dict(TINY_SETTINGS, data_path=str(tiny_data_root), checkpoint_dir=str(workdir / "saved"))
    argv = ["--dataset=tiny", "--models=SASRec,NoSuchModel", f"--checkpoints={cmi_checkpoint}", "--p", "0,0.5"]
    argv += ["--out", str(out)] + flags(settings)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        status, stdout, stderr = call(verb("robustness"), argv)
    finally:
        os.chdir(cwd)
    return status, stdout, stderr, out


@pytest.fixture(scope="module")
def seeds_run(tiny_data_root, workdir, cmi_checkpoint, robustness_run):
    """Two CMI runs (seeds 2022 and 2023) under one label and the SASRec of ``robustness_run``; lengths 4,7,9."""
    settings = dict(TINY_SETTINGS, data_path=str(tiny_data_root), checkpoint_dir=str(workdir / "saved_seed"))
    settings.update(num_interest=2, embedding_size=8, epochs=1, seed=2023)
    out = workdir / "seeds"
    sasrec = _checkpoints(robustness_run)["SASRec"]
    argv = [f"--checkpoints=CMI={cmi_checkpoint},CMI={{second}},SASRec={sasrec}", "--p", "0,0.5"]
    argv += ["--lengths", "4,7,9", "--out", str(out)]
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        second = run_recbole_cmi("CMI", "tiny", config_dict=settings, saved=True)["saved_model_file"]
        status, stdout, stderr = call(verb("robustness"), [a.replace("{second}", second) for a in argv])
    finally:
        os.chdir(cwd)
    return status, stdout, stderr, out, second


# --------------------------------------------------------------------------- checkpoints
@pytest.mark.e2e
def test_a_checkpoint_loads_on_cpu(cmi_checkpoint):
    config, model, dataset, *_ = load_data_and_model(cmi_checkpoint)
    assert isinstance(model, CMI) and model.num_interest == 2
    assert config["device"] == torch.device("cpu")
    assert {p.device.type for p in model.parameters()} == {"cpu"}


# --------------------------------------------------------------------------- inspect
@pytest.mark.e2e
def test_inspect_writes_the_report_and_its_pngs(cmi_checkpoint, tmp_path):
    out = tmp_path / "report"
    status, stdout, stderr = call(verb("inspect"), ["--checkpoint", cmi_checkpoint, "--out", str(out), "--users", "2"])
    assert status == 0, stderr
    report = unpadded((out / "report.md").read_text(encoding="utf-8"))
    for name in ("usage", "confusion", "pca", "users"):
        assert (out / f"{name}.png").read_bytes().startswith(PNG)
        assert f"]({name}.png)" in report
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["num_interest"] == 2 and summary["planted_categories"] == 4
    assert sum(summary["item_share"]) == pytest.approx(1.0)
    assert sum(summary["assignment_mass"]) == pytest.approx(1.0)
    nmi = summary["recovery"]["CMI implicit categories (argmax, 2 clusters)"]["nmi"]
    assert 0.0 <= nmi <= 1.0
    assert f"NMI {nmi:.3f}" in stdout
    assert len(summary["users"]) == 2
    # Typical items carry their original ids and planted categories: "v12 (c3)".
    assert "| 0 | v" in report and " (c" in report


@pytest.mark.e2e
def test_inspect_compares_with_a_baseline_and_rejects_non_cmi_models(robustness_run, tmp_path):
    sasrec = _checkpoints(robustness_run)["SASRec"]
    status, _, stderr = call(verb("inspect"), ["--checkpoint", sasrec, "--out", str(tmp_path / "x")])
    assert status == 2
    assert stderr.strip().splitlines() == [
        f"error: {sasrec} holds a SASRec model: inspection needs a model with implicit categories (CMI)"
    ]


@pytest.mark.e2e
def test_inspect_reports_the_baseline_kmeans(robustness_run, cmi_checkpoint, tmp_path):
    sasrec = _checkpoints(robustness_run)["SASRec"]
    out = tmp_path / "with_baseline"
    argv = ["--checkpoint", cmi_checkpoint, "--out", str(out), "--users", "0", "--baseline_checkpoint", sasrec]
    status, stdout, stderr = call(verb("inspect"), argv)
    assert status == 0, stderr
    recovery = json.loads((out / "summary.json").read_text(encoding="utf-8"))["recovery"]
    baseline = recovery["k-means of SASRec item embeddings (k = 4)"]
    assert 0.0 <= baseline["nmi"] <= 1.0
    assert "k-means of SASRec item embeddings (k = 4): NMI" in stdout
    assert not (out / "users.png").exists()


def test_pca_is_deterministic_and_orthonormal():
    x = np.random.default_rng(0).normal(size=(50, 6))
    coords, components, mean, explained = pca_2d(x)
    again, *_ = pca_2d(x.copy())
    assert np.array_equal(coords, again)
    assert np.allclose(components @ components.T, np.eye(2))
    assert np.allclose(coords.var(axis=0), np.linalg.svd(x - mean, compute_uv=False)[:2] ** 2 / len(x))
    assert explained[0] >= explained[1] > 0
    assert all(row[np.argmax(np.abs(row))] > 0 for row in components)


# --------------------------------------------------------------------------- recommend
def _user_sequence(data_root, user, item_token2id):
    frame = pd.read_csv(data_root / "tiny" / "tiny.inter", sep="\t")
    rows = frame[frame["user_id:token"] == user].sort_values("timestamp:float")
    return [item_token2id[token] for token in rows["item_id:token"]]


@pytest.mark.e2e
def test_recommend_agrees_with_full_sort_predict_and_excludes_the_history(cmi_checkpoint, tiny_data_root):
    config, model, dataset, *_ = load_data_and_model(cmi_checkpoint)
    token2id = dataset.field2token_id[dataset.iid_field]
    lengths = pd.read_csv(tiny_data_root / "tiny" / "tiny.inter", sep="\t").groupby("user_id:token").size()
    user = str(lengths.idxmax())  # 16 interactions: longer than MAX_ITEM_LIST_LENGTH = 10
    sequence = _user_sequence(tiny_data_root, user, token2id)
    max_len = config["MAX_ITEM_LIST_LENGTH"]
    assert len(sequence) > max_len

    status, stdout, stderr = call(verb("recommend"), ["--checkpoint", cmi_checkpoint, "--user", user, "--topk", "15"])
    assert status == 0, stderr
    lines = stdout.strip().splitlines()
    assert lines[0].startswith(f"user {user}: CMI, history of {max_len} items")
    assert lines[1] == "rank\titem\tscore\tinterest"
    table = [line.split("\t") for line in lines[2:]]
    assert [int(r[0]) for r in table] == list(range(1, 16))

    history = torch.tensor([sequence[-max_len:]])
    interaction = Interaction({model.ITEM_SEQ: history, model.ITEM_SEQ_LEN: torch.tensor([max_len])})
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)[0]
    scores[0] = -torch.inf
    scores[sequence] = -torch.inf
    values, items = scores.topk(15)
    expected = [str(t) for t in dataset.id2token(dataset.iid_field, items.numpy())]
    assert [r[1] for r in table] == expected
    assert [float(r[2]) for r in table] == pytest.approx(values.tolist(), abs=1e-4)
    history_tokens = set(dataset.id2token(dataset.iid_field, np.array(sequence)))
    assert not history_tokens & {r[1] for r in table}
    assert {int(r[3]) for r in table} <= {0, 1}


@pytest.mark.e2e
def test_recommend_for_a_single_interest_model_has_no_interest_column(robustness_run):
    sasrec = _checkpoints(robustness_run)["SASRec"]
    status, stdout, stderr = call(verb("recommend"), ["--checkpoint", sasrec, "--user", "u1", "--topk", "3"])
    assert status == 0, stderr
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("user u1: SASRec, history of ")
    assert lines[1] == "rank\titem\tscore" and len(lines) == 5


@pytest.mark.e2e
def test_recommend_unknown_user_is_one_error_line(cmi_checkpoint):
    status, stdout, stderr = call(verb("recommend"), ["--checkpoint", cmi_checkpoint, "--user", "nobody"])
    assert status == 2
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown user 'nobody' in dataset 'tiny' (60 users")


# --------------------------------------------------------------------------- perturbation
def _batch():
    seq = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [3, 4, 0, 0, 0, 0, 0, 0], [7, 0, 0, 0, 0, 0, 0, 0]])
    return seq, torch.tensor([8, 2, 1])


@pytest.mark.parametrize("mode", ["drop", "replace"])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_perturbation_keeps_lengths_valid_and_inputs_untouched(mode, p):
    seq, length = _batch()
    seq_before, length_before = seq.clone(), length.clone()
    new_seq, new_len = perturb_histories(seq, length, p, mode, torch.Generator().manual_seed(1), n_items=30)
    assert torch.equal(seq, seq_before) and torch.equal(length, length_before)
    assert new_seq.shape == seq.shape and new_len.dtype == length.dtype
    assert ((new_len >= 1) & (new_len <= seq.shape[1])).all()
    positions = torch.arange(seq.shape[1])
    assert ((new_seq > 0) == (positions < new_len.unsqueeze(1))).all()  # left-aligned, zero padding
    expected = torch.floor(p * length.double() + 0.5).long()
    if mode == "drop":
        assert torch.equal(new_len, length - torch.minimum(expected, length - 1))
        for row in range(len(seq)):  # the kept items are a subsequence, in order
            kept = new_seq[row, : new_len[row]].tolist()
            original = iter(seq[row, : length[row]].tolist())
            assert all(item in original for item in kept)
    else:
        assert torch.equal(new_len, length)
        assert torch.equal((new_seq != seq).sum(dim=1), expected)
        assert ((new_seq >= 0) & (new_seq < 30)).all()


def test_perturbation_is_seeded_and_drop_zero_is_the_identity():
    seq, length = _batch()

    def run(seed, mode="drop", p=0.5):
        return perturb_histories(seq, length, p, mode, torch.Generator().manual_seed(seed), n_items=30)

    for mode in ("drop", "replace"):
        first, second, other = run(3, mode), run(3, mode), run(4, mode)
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
        assert not torch.equal(first[0], other[0])
    same_seq, same_len = run(3, "drop", 0.0)
    assert torch.equal(same_seq, seq) and torch.equal(same_len, length)
    assert torch.equal(run(3, "replace", 0.0)[0], seq)


def test_perturbation_rejects_bad_arguments():
    seq, length = _batch()
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ToolError, match="mode"):
        perturb_histories(seq, length, 0.1, "shuffle", gen)
    with pytest.raises(ToolError, match=r"\[0, 1\]"):
        perturb_histories(seq, length, 1.5, "drop", gen)
    with pytest.raises(ToolError, match="n_items"):
        perturb_histories(seq, length, 0.1, "replace", gen)


def test_model_specs_accept_aliases_and_settings(capsys):
    expected = [
        ("CMI", "CMI", {}),
        ("CMI_noCL", "CMI", {"cl_weight": 0.0}),
        ("Wide", "CMI", {"num_interest": 4, "cl_weight": 0.05}),
        ("SASRec", "SASRec", {}),
    ]
    specs = parse_models("CMI,CMI_noCL,CMI:num_interest=4,cl_weight=0.05,label=Wide,SASRec")
    assert [(s.label, s.model, s.overrides) for s in specs] == expected
    assert capsys.readouterr().err == ""
    # the earlier spelling still works, with a note
    specs = parse_models("CMI,CMI_noCL,Wide:model=CMI;num_interest=4;cl_weight=0.05,SASRec")
    assert [(s.label, s.model, s.overrides) for s in specs] == expected
    assert "old spelling" in capsys.readouterr().err
    with pytest.raises(ConfigValueError, match="key=value"):
        parse_models("CMI:num_interest")


# --------------------------------------------------------------------------- robustness
def _rows(robustness_run):
    with open(robustness_run[3] / "robustness.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _checkpoints(robustness_run):
    return {r["model"]: r["checkpoint"] for r in _rows(robustness_run) if not r["error"]}


@pytest.mark.e2e
def test_robustness_writes_the_table_and_plot_and_survives_a_failing_model(robustness_run, cmi_checkpoint):
    status, stdout, stderr, out = robustness_run
    assert status == 1  # one model failed; the others were still evaluated and written
    assert "error: NoSuchModel failed: " in stderr
    assert (out / "robustness.png").read_bytes().startswith(PNG)
    rows = _rows(robustness_run)
    good = [r for r in rows if not r["error"]]
    assert {(r["model"], r["perturbation"], float(r["p"])) for r in good} == {
        (model, mode, p) for model in ("SASRec", "CMI") for mode in ("drop", "replace") for p in (0.0, 0.5)
    }
    assert [r["model"] for r in rows if r["error"]] == ["NoSuchModel"]
    for model in ("SASRec", "CMI"):
        clean = {r["perturbation"]: float(r["recall@20"]) for r in good if r["model"] == model and r["p"] == "0.0"}
        assert clean["drop"] == clean["replace"]
    # p = 0 is RecBole's own test evaluation of the checkpoint.
    cmi_clean = next(float(r["recall@20"]) for r in good if r["model"] == "CMI" and r["p"] == "0.0")
    assert cmi_clean == pytest.approx(float(evaluate_checkpoint(cmi_checkpoint)["recall@20"]))
    table = (out / "robustness.md").read_text(encoding="utf-8")
    assert "## Recall@20" in table and "## NDCG@20" in table and "| SASRec | " in table
    assert "![Recall@20 vs p](robustness.png)" in table and "- NoSuchModel: " in table


def test_robustness_usage_errors_are_one_line():
    status, _, stderr = call(verb("robustness"), ["--p", "0,0.5"])
    assert status == 2 and len(stderr.strip().splitlines()) == 1
    status, _, stderr = call(verb("robustness"), ["--checkpoints=x.pth", "--p", "0,2"])
    assert status == 2
    assert stderr.strip().splitlines() == ["error: --p: fractions must be in [0, 1], got '0,2'"]


@pytest.mark.e2e
def test_robustness_aggregates_the_runs_under_one_label(seeds_run, cmi_checkpoint, robustness_run):
    status, _, stderr, out, second = seeds_run
    assert status == 0, stderr
    rows = list(csv.DictReader(open(out / "robustness.csv", encoding="utf-8")))
    sasrec = _checkpoints(robustness_run)["SASRec"]
    assert {(r["model"], r["run"], r["checkpoint"]) for r in rows} == {
        ("CMI", "1", cmi_checkpoint),
        ("CMI", "2", second),
        ("SASRec", "1", sasrec),
    }
    table = (out / "robustness.md").read_text(encoding="utf-8")
    lines = table.splitlines()

    def runs_of(model, perturbation, p="", bucket="", metric="recall@20"):
        return [
            float(r[metric])
            for r in sorted(rows, key=lambda r: r["run"])
            if r["model"] == model and r["perturbation"] == perturbation and r["p"] == p and r["bucket"] == bucket
        ]

    for metric, title in (("recall@20", "Recall@20"), ("ndcg@20", "NDCG@20")):
        clean, dropped, replaced = (runs_of("CMI", mode, p, metric=metric) for mode, p in CLEAN_DROP_REPLACE)
        assert len(clean) == len(dropped) == len(replaced) == 2
        assert any(a != b for a, b in (clean, dropped, replaced))  # two different models: not all sds are 0
        cells = []
        for values in (clean, dropped, replaced):
            mean, sd = np.mean(values), np.std(values, ddof=1)
            kept = "" if values is clean else f" ({mean / np.mean(clean):.0%})"
            cells.append(f"{mean:.4f} ± {sd:.4f}{kept}")
        section = lines[lines.index(f"## {title}") :]
        assert f"| CMI | 2 | {' | '.join(cells)} |" in section
        sasrec_clean = runs_of("SASRec", "drop", "0.0", metric=metric)
        assert any(line.startswith(f"| SASRec | 1 | {sasrec_clean[0]:.4f} | ") for line in section)
    # the length buckets: csv rows with p empty, every test user in one bucket, an empty bucket has no metrics
    length_rows = [r for r in rows if r["perturbation"] == "length"]
    assert {r["p"] for r in length_rows} == {""}
    assert [r["bucket"] for r in length_rows if r["model"] == "SASRec"] == ["1-4", "5-7", "8-9", ">=10"]
    for model, run in (("CMI", "1"), ("CMI", "2"), ("SASRec", "1")):
        users = {r["bucket"]: int(r["users"]) for r in length_rows if r["model"] == model and r["run"] == run}
        assert users["1-4"] == 0 and sum(users.values()) == 60  # tiny: 60 users, histories of 5 or more
    assert all(r["recall@20"] == "" for r in length_rows if r["bucket"] == "1-4")
    section = lines[lines.index("## By history length") :]
    assert "| CMI | 2 | 1–4 | 0 | – | – |" in section
    users = int(next(r["users"] for r in length_rows if r["model"] == "CMI" and r["bucket"] == "5-7"))
    recall = runs_of("CMI", "length", bucket="5-7")
    ndcg = runs_of("CMI", "length", bucket="5-7", metric="ndcg@20")
    expected = " | ".join(f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}" for v in (recall, ndcg))
    assert f"| CMI | 2 | 5–7 | {users} | {expected} |" in section
    assert "MAX_ITEM_LIST_LENGTH (10)" in table and "| SASRec | 1 | ≥ 10 | " in table
    assert (out / "robustness.png").read_bytes().startswith(PNG)


CLEAN_DROP_REPLACE = (("drop", "0.0"), ("drop", "0.5"), ("replace", "0.5"))


@pytest.mark.e2e
def test_robustness_merges_a_study_split_over_processes_into_the_one_it_would_have_been(
    seeds_run, cmi_checkpoint, robustness_run, tmp_path
):
    status, _, stderr, whole, second = seeds_run
    sasrec = _checkpoints(robustness_run)["SASRec"]
    common = ["--p", "0,0.5", "--lengths", "4,7,9"]
    status, _, stderr = call(
        verb("robustness"), [f"--checkpoints=CMI={cmi_checkpoint}", "--out", str(tmp_path / "a")] + common
    )
    assert status == 0, stderr
    part = str(tmp_path / "a" / "robustness.csv")
    argv = [f"--checkpoints=CMI={second},SASRec={sasrec}", f"--merge={part}", "--out", str(tmp_path / "b")]
    status, _, stderr = call(verb("robustness"), argv + common)
    assert status == 0, stderr
    # the same runs, numbered in the same order: the same tables as the study run in one process
    assert (tmp_path / "b" / "robustness.md").read_text(encoding="utf-8") == (whole / "robustness.md").read_text(
        encoding="utf-8"
    )
    merged = list(csv.DictReader(open(tmp_path / "b" / "robustness.csv", encoding="utf-8")))
    assert {r["seed"] for r in merged} == {"2022"} and {r["max_length"] for r in merged} == {"10"}
    # a merge alone republishes
    status, _, stderr = call(
        verb("robustness"), [f"--merge={tmp_path / 'b' / 'robustness.csv'}", "--out", str(tmp_path / "c")] + common
    )
    assert status == 0, stderr
    assert (tmp_path / "c" / "robustness.md").read_text(encoding="utf-8") == (whole / "robustness.md").read_text(
        encoding="utf-8"
    )
    # other perturbations, the same run twice, a csv without the seed column: one line each, nothing written
    for extra, message in (
        (["--seed", "7"], f"error: --merge: {part} line 2: perturbation seed 2022, this study's is 7"),
        ([f"--merge={part},{part}"], f"error: --merge: {cmi_checkpoint} appears twice under CMI"),
    ):
        status, _, stderr = call(verb("robustness"), [f"--merge={part}", "--out", str(tmp_path / "x")] + extra)
        assert (status, stderr.strip().splitlines()) == (2, [message])
    old = tmp_path / "old.csv"
    old.write_text("\n".join(",".join(c for c in line.split(",")[:-2]) for line in open(part).read().splitlines()))
    status, _, stderr = call(verb("robustness"), [f"--merge={old}", "--out", str(tmp_path / "x")])
    assert status == 2
    assert stderr.strip().splitlines() == [
        f"error: --merge: {old} records no perturbation seed (written before the csv had one): rerun it"
    ]
    assert not (tmp_path / "x").exists()


@pytest.mark.e2e
def test_robustness_refuses_runs_of_different_models_under_one_label(cmi_checkpoint, robustness_run, tmp_path):
    sasrec = _checkpoints(robustness_run)["SASRec"]
    argv = [f"--checkpoints=CMI={cmi_checkpoint},CMI={sasrec}", "--out", str(tmp_path / "x")]
    status, _, stderr = call(verb("robustness"), argv)
    assert status == 2
    assert stderr.strip().splitlines() == [
        f"error: --checkpoints: the runs under label 'CMI' must hold one model, but {cmi_checkpoint} holds CMI "
        f"and {sasrec} holds SASRec"
    ]
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("text", ["", "6,6", "19,6", "0,5", "-3", "6,a", "6.5", "6,,19"])
def test_robustness_lengths_errors_are_one_line(text):
    status, _, stderr = call(verb("robustness"), ["--checkpoints=x.pth", f"--lengths={text}"])
    assert status == 2
    assert stderr.strip().splitlines() == [
        "error: --lengths: expected comma-separated increasing positive integers such as 6,19 "
        f"(buckets 1-6, 7-19, >=20), got {text!r}"
    ]


def test_length_buckets_and_their_labels():
    assert parse_lengths(None) is None
    assert parse_lengths("6, 19") == [6, 19]
    assert length_buckets([6, 19]) == [(1, 6), (7, 19), (20, None)]
    assert [bucket_label(*b) for b in length_buckets([1, 6, 19])] == ["1", "2-6", "7-19", ">=20"]
    assert length_buckets([]) == [(1, None)]


def _tiny_loo_lengths(data_root, max_len):
    """Each tiny user's test input length by leave-one-out: all but their last item, cut to max_len."""
    frame = pd.read_csv(data_root / "tiny" / "tiny.inter", sep="\t")
    return (frame.groupby("user_id:token").size() - 1).clip(upper=max_len).to_numpy()


@pytest.mark.parametrize("protocol", ["loo", "multi_target"])
def test_length_buckets_split_the_test_users_and_recombine_to_the_clean_metrics(tiny_config, tiny_data_root, protocol):
    settings = tiny_config(eval_protocol=protocol, metrics=["Recall", "NDCG"], valid_metric="Recall@10")
    settings["metric_decimal_place"] = 12  # RecBole rounds metrics: the recombination is checked at 1e-9
    config, _, (_, _, test), model = prepare("SASRec", "tiny", config_dict=settings)  # untrained: fine
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    clean = trainer.evaluate(test, load_best_model=False)
    buckets = length_buckets([4, 7, 9, 10])  # 1-4, 5-7, 8-9, 10, >=11 (empty: histories are cut to 10 items)
    lengths = (test.interaction if protocol == "multi_target" else test._dataset.inter_feat)["item_length"].numpy()
    if protocol == "loo":  # counted from the file, independently of RecBole
        assert sorted(lengths) == sorted(_tiny_loo_lengths(tiny_data_root, 10))
    expected_users = [int(((lengths >= lo) & (lengths <= (hi or 10**9))).sum()) for lo, hi in buckets]
    assert expected_users[-1] == 0 and sum(n > 0 for n in expected_users) >= 2 and sum(expected_users) == len(lengths)
    if protocol == "loo":  # every tiny user has 6 or more items: a history of 5 or more
        assert expected_users[0] == 0
    weighted = dict.fromkeys(("recall@10", "ndcg@10"), 0.0)
    for (lo, hi), users in zip(buckets, expected_users):
        loader = length_loader(test, config, lo, hi)
        assert count_rows(loader, config) == users
        inside = np.flatnonzero((lengths >= lo) & (lengths <= (hi or 10**9)))
        if protocol == "multi_target":  # the same users, with their own histories and targets
            split, original = loader.split, test.split
            assert len(split) == users and split.users.tolist() == original.users[inside].tolist()
            for new, old in enumerate(inside):
                assert split.history_of(new) == original.history_of(old)
                assert split.targets_of(new) == original.targets_of(old)
            assert torch.equal(loader.interaction["item_id_list"], test.interaction["item_id_list"][inside])
        else:
            rows, original = loader._dataset.inter_feat, test._dataset.inter_feat
            for name in ("user_id", "item_id", "item_id_list", "item_length"):
                assert torch.equal(rows[name], original[name][inside])
        if users == 0:
            continue
        metrics = trainer.evaluate(loader, load_best_model=False)
        for key in weighted:
            weighted[key] += users * metrics[key] / len(lengths)
    for key, value in weighted.items():
        assert value == pytest.approx(clean[key], abs=1e-9)


def test_checkpoints_under_one_label_share_it_and_other_repeated_names_get_a_prime():
    def saved(model, **keys):
        return collections.defaultdict(lambda: None, model=model, **keys)  # as a Config: None for an unset key

    specs = parse_models("CMI,CMI") + parse_checkpoints("a.pth,CMI=b.pth,Seeds=c.pth,CMI=d.pth,e.pth,f.pth,g.pth")
    configs = {"a.pth": saved("CMI"), "b.pth": saved("CMI"), "c.pth": saved("SASRec"), "d.pth": saved("CMI")}
    configs.update({"e.pth": saved("CMI", cl_weight=0.0), "f.pth": saved("SASRec"), "g.pth": None})
    labels, taken = assign_labels(specs, configs)
    # trained: CMI, CMI'; a.pth (a CMI): CMI''; b.pth and d.pth, runs under the label CMI: CMI''' (the name is taken)
    assert labels == ["CMI", "CMI'", "CMI''", "CMI'''", "Seeds", "CMI'''", "CMI_noCL", "SASRec", None]
    assert taken == {"CMI", "CMI'", "CMI''", "CMI'''", "Seeds", "CMI_noCL", "SASRec"}
