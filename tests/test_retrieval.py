"""faiss retrieval per interest: evaluation, recommend, export (recbole_cmi.retrieval, recbole_cmi.export)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, TINY_SETTINGS, call, verb

from recbole_cmi.config import Config
from recbole_cmi.data.dataloader import data_preparation
from recbole_cmi.errors import ConfigValueError
from recbole_cmi.pipeline import create_dataset
from recbole_cmi.quick_start import load_data_and_model, run_recbole_cmi
from recbole_cmi.retrieval import (
    MISSING_FAISS,
    SUPPORTED_MODELS,
    ItemIndex,
    RetrievalSettings,
    Retrieved,
    check_model_supported,
    import_faiss,
    interest_vectors,
    item_table,
    retrieve,
)
from recbole_cmi.tools.recommend import recommend
from recbole_cmi.trainer import compact_scores, get_trainer
from recbole_cmi.utils import get_model, train_batch_hooks

pytest.importorskip("faiss")

TOPK = 20


def tiny_settings(tiny_data_root, folder, **overrides):
    settings = dict(TINY_SETTINGS, data_path=str(tiny_data_root), checkpoint_dir=str(folder / "saved"))
    settings.update(num_interest=3, exclude_history_items=True, topk=[5, TOPK], valid_metric="NDCG@20")
    settings.update(overrides)
    return settings


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("retrieval")


def _train(tiny_data_root, workdir, model):
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        settings = tiny_settings(tiny_data_root, workdir)
        return run_recbole_cmi(model, "tiny", config_dict=settings, saved=True, evaluate_test=False)["saved_model_file"]
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def checkpoints(tiny_data_root, workdir):
    """One tiny trained CMI (m = 3) and SASRec (1 epoch each, history items excluded)."""
    return {model: _train(tiny_data_root, workdir, model) for model in ("CMI", "SASRec")}


def _trainer(checkpoint, **settings):
    config, model, _, _, _, test_data = load_data_and_model(checkpoint)
    for key, value in settings.items():
        config[key] = value
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.tot_item_num = test_data._dataset.item_num
    model.eval()
    return trainer, test_data


def _ranked(trainer, test_data, k=TOPK):
    """Per test user, the top-k item indices and their scores (-inf: none): of the full-sort pass that
    RecBole's collector reads (exact), or of the retrieval that feeds it (faiss)."""
    items, scores = [], []
    with torch.no_grad():
        for batch in test_data:
            if trainer.retrieval.mode == "faiss":
                found = trainer.retrieve_batch(batch[0])
                values, top = found.scores, found.items
            else:
                _, batch_scores, _, _ = trainer._full_sort_batch_eval(batch)
                values, top = batch_scores.topk(k, dim=1)
            items.append(top.masked_fill(torch.isinf(values), 0))
            scores.append(values)
    return torch.cat(items), torch.cat(scores)


# --------------------------------------------------------------------------------------------- the maths
def test_retrieve_with_a_flat_index_is_the_brute_force_max_over_interests():
    generator = torch.Generator().manual_seed(3)
    items = torch.randn(300, 8, generator=generator)
    items[0] = 0
    interests = torch.randn(5, 4, 8, generator=generator)
    excluded = torch.randint(0, 300, (5, 30), generator=generator)
    index = ItemIndex(items, RetrievalSettings(mode="faiss", index="flat"))
    found = retrieve(index, interests, items, 25, excluded)

    brute = torch.einsum("bmd,nd->bmn", interests, items)
    best, origin = brute.max(dim=1)
    best[:, 0] = -torch.inf
    best.scatter_(1, excluded, -torch.inf)
    values, top = best.topk(25, dim=1)
    assert torch.equal(found.items, top)
    torch.testing.assert_close(found.scores, values)
    assert torch.equal(found.interests, origin.gather(1, top))


def test_retrieve_returns_fewer_items_when_the_catalogue_runs_out():
    items = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    index = ItemIndex(items, RetrievalSettings(mode="faiss", index="flat"))
    found = retrieve(index, torch.randn(2, 2, 4), items, 5, torch.tensor([[1, 2, 0], [3, 0, 0]]))
    finite = torch.isfinite(found.scores)
    assert finite.sum(dim=1).tolist() == [3, 4]  # 5 real items, minus the excluded ones
    assert set(found.items[0][finite[0]].tolist()) == {3, 4, 5}
    assert (found.items[~finite] == 0).all()


def test_compact_scores_count_unretrieved_positives_and_never_rank_them():
    inf = torch.inf
    found = Retrieved(
        items=torch.tensor([[5, 3, 0], [2, 7, 9]]),
        scores=torch.tensor([[0.9, 0.5, -inf], [0.8, 0.7, 0.1]]),
        interests=torch.zeros(2, 3, dtype=torch.long),
    )
    scores, rows, columns = compact_scores(found, torch.tensor([0, 0, 1, 0]), torch.tensor([8, 3, 4, 3]))
    assert rows.tolist() == [0, 0, 1] and columns.tolist() == [1, 4, 3]  # 3 retrieved at slot 1; 8 and 4 missed
    assert scores.shape == (2, 5) and torch.isinf(scores[:, 3:]).all() and torch.isfinite(scores[:, :3]).all()
    hits = torch.zeros_like(scores, dtype=torch.int)
    hits[rows, columns] = 1  # what RecBole's collector does
    assert hits.sum(dim=1).tolist() == [2, 1]
    assert hits.gather(1, scores.topk(3, dim=1).indices).tolist() == [[0, 1, 0], [0, 0, 0]]


@pytest.mark.parametrize("model_name", SUPPORTED_MODELS)
def test_interest_vectors_and_item_table_are_each_models_full_sort_predict(model_name, tiny_data_root, tmp_path):
    config = Config(model_name, "tiny", config_dict=tiny_settings(tiny_data_root, tmp_path), read_argv=False)
    _, _, test_data = data_preparation(config, create_dataset(config), train_batch_hooks(config["model"]))
    model = get_model(model_name)(config, test_data._dataset).eval()
    interaction = next(iter(test_data))[0]
    with torch.no_grad():
        expected = model.full_sort_predict(interaction)
        interests = interest_vectors(model, interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN])
        scores = torch.einsum("bmd,nd->bmn", interests, item_table(model)).amax(dim=1)
    torch.testing.assert_close(scores, expected.view_as(scores), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------- evaluation
@pytest.mark.e2e
@pytest.mark.parametrize("model_name", ["CMI", "SASRec"])
@pytest.mark.parametrize("exclude", [True, False])
def test_an_exhaustive_index_ranks_every_test_user_exactly(checkpoints, model_name, exclude):
    exact, test_data = _trainer(checkpoints[model_name], exclude_history_items=exclude)
    exact_items, exact_scores = _ranked(exact, test_data)
    for index in ({"faiss_index": "flat"}, {"faiss_index": "ivf", "faiss_nlist": 4, "faiss_nprobe": 4}):
        faiss_trainer, _ = _trainer(checkpoints[model_name], exclude_history_items=exclude, retrieval="faiss", **index)
        items, scores = _ranked(faiss_trainer, test_data)
        assert faiss_trainer.item_index is not None and exact.item_index is None  # the faiss path ran
        assert torch.equal(items, exact_items), index
        torch.testing.assert_close(scores, exact_scores)


@pytest.mark.e2e
def test_history_items_are_excluded_exactly_as_in_the_exact_ranking(checkpoints):
    # ItemCoverage reads item ids: the trainer hands the collector the full [users, items] matrix
    faiss_trainer, test_data = _trainer(
        checkpoints["CMI"], retrieval="faiss", faiss_index="flat", metrics=["Recall", "ItemCoverage"]
    )
    with torch.no_grad():
        for batch in test_data:
            interaction, scores, _, _ = faiss_trainer._full_sort_batch_eval(batch)
            history = interaction["item_id_list"]
            assert torch.isinf(scores.gather(1, history)).all()
            assert torch.isinf(scores[:, 0]).all()
            n_history = (history > 0).sum(dim=1)
            # every item outside the history (and padding) is ranked: top-20 holds 20 finite scores
            assert (torch.isfinite(scores).sum(dim=1) >= torch.clamp(80 - n_history - 1, max=TOPK)).all()


@pytest.mark.e2e
def test_evaluate_gives_the_same_metrics_through_recboles_evaluator(checkpoints):
    metrics = ["Recall", "NDCG", "Hit", "MRR", "Precision", "MAP"]
    results = []
    for settings in ({}, {"retrieval": "faiss", "faiss_index": "flat"}):
        trainer, test_data = _trainer(checkpoints["CMI"], metrics=metrics, **settings)
        results.append(trainer.evaluate(test_data, load_best_model=False))
    assert results[0] == results[1]
    assert {"recall@20", "ndcg@20"} <= set(results[0]) and len(results[0]) == 2 * len(metrics)


@pytest.mark.e2e
def test_metrics_that_read_item_ids_get_the_full_score_matrix(checkpoints):
    structs = []
    for settings in ({}, {"retrieval": "faiss", "faiss_index": "flat"}):
        trainer, test_data = _trainer(checkpoints["CMI"], metrics=["Recall", "ItemCoverage"], **settings)
        with torch.no_grad():
            for batch in test_data:
                interaction, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batch)
                assert scores.shape == (len(interaction), trainer.tot_item_num)
                trainer.eval_collector.eval_batch_collect(scores, interaction, positive_u, positive_i)
        structs.append(trainer.eval_collector.get_data_struct())
    for key in ("rec.items", "rec.topk"):
        assert torch.equal(structs[0].get(key), structs[1].get(key)), key


@pytest.mark.e2e
@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_indexes_are_deterministic(checkpoints, index):
    runs = []
    for _ in range(2):
        trainer, test_data = _trainer(checkpoints["CMI"], retrieval="faiss", faiss_index=index, faiss_nprobe=1)
        runs.append(_ranked(trainer, test_data))
    assert torch.equal(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][1], runs[1][1])


# --------------------------------------------------------------------------------------------- recommend
def _users(checkpoint, n=4):
    _, _, dataset, *_ = load_data_and_model(checkpoint)
    return [str(t) for t in dataset.field2id_token[dataset.uid_field][1 : n + 1]]


@pytest.mark.e2e
def test_recommend_with_faiss_equals_the_exact_ranking(checkpoints):
    _, model, dataset, *_ = load_data_and_model(checkpoints["CMI"])
    settings = RetrievalSettings(mode="faiss", index="flat")
    for user in _users(checkpoints["CMI"]):
        exact = recommend(model, dataset, user, 10)
        found = recommend(model, dataset, user, 10, settings)
        assert found.items == exact.items and found.interests == exact.interests
        np.testing.assert_allclose(found.scores, exact.scores, rtol=1e-5, atol=1e-6)


@pytest.mark.e2e
def test_recommend_command_prints_the_interest_with_faiss(checkpoints):
    user = _users(checkpoints["CMI"], 1)[0]
    argv = ["--checkpoint", checkpoints["CMI"], "--user", user, "--topk", "5"]
    status, exact, _ = call(verb("recommend"), argv)
    status_faiss, found, _ = call(verb("recommend"), argv + ["--retrieval", "faiss", "--faiss-index", "flat"])
    assert status == status_faiss == 0
    assert "\tinterest" in found
    rows = lambda text: [line.split("\t")[:2] + line.split("\t")[3:] for line in text.splitlines()[1:]]  # noqa: E731
    assert rows(found) == rows(exact) and len(rows(found)) == 6


# --------------------------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def exports(checkpoints, workdir):
    folders = {}
    for model_name, index in (("CMI", "flat"), ("SASRec", "hnsw")):
        folder = workdir / f"export-{model_name}"
        status, out, err = call(
            verb("export"), ["--checkpoint", checkpoints[model_name], "--out", str(folder), "--faiss-index", index]
        )
        assert status == 0, err
        folders[model_name] = folder
    return folders


@pytest.mark.e2e
def test_the_export_holds_the_promised_files(exports):
    manifest = json.loads((exports["CMI"] / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["model"] == "CMI" and manifest["num_interests"] == 3 and manifest["dim"] == 16
    assert manifest["temperature"] > 0 and manifest["history_length"] == 10
    for name in manifest["files"].values():
        assert (exports["CMI"] / name).is_file(), name
    vectors = np.load(exports["CMI"] / "item_vectors.npy")
    assert vectors.shape == (manifest["n_items"], 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors[1:], axis=1), 1.0, rtol=1e-5)  # CMI scores unit vectors
    sasrec = json.loads((exports["SASRec"] / "manifest.json").read_text(encoding="utf-8"))
    assert sasrec["num_interests"] == 1 and sasrec["temperature"] is None and sasrec["index"]["type"] == "hnsw"


@pytest.mark.e2e
@pytest.mark.parametrize("model_name", ["CMI", "SASRec"])
def test_the_torchscript_encoder_equals_the_models_forward(checkpoints, exports, model_name):
    _, model, _, _, _, test_data = load_data_and_model(checkpoints[model_name])
    encoder = torch.jit.load(str(exports[model_name] / "user_encoder.pt"))
    model.eval()
    with torch.no_grad():
        for batch in test_data:
            interaction = batch[0]
            seq, length = interaction["item_id_list"], interaction["item_length"]
            expected = interest_vectors(model, seq, length)
            torch.testing.assert_close(encoder(seq), expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(encoder(seq[:3]), expected[:3], atol=1e-5, rtol=1e-5)


@pytest.mark.e2e
def test_the_serving_example_reproduces_recommend(checkpoints, exports):
    example = REPO_ROOT / "docs" / "serve_export.py"
    assert len(example.read_text(encoding="utf-8").splitlines()) <= 40
    for user in _users(checkpoints["CMI"]):
        _, expected, _ = call(verb("recommend"), ["--checkpoint", checkpoints["CMI"], "--user", user, "--topk", "8"])
        out = io.StringIO()
        argv = sys.argv
        try:
            sys.argv = [str(example), str(exports["CMI"]), user, "8"]
            with contextlib.redirect_stdout(out):
                runpy.run_path(str(example), run_name="__main__")
        finally:
            sys.argv = argv
        items = lambda text: [(r.split("\t")[1], r.split("\t")[3]) for r in text.strip().splitlines()[-8:]]  # noqa: E731
        assert items(out.getvalue()) == items(expected), user


# --------------------------------------------------------------------------------------------- errors
@pytest.mark.e2e
def test_missing_faiss_is_one_line_naming_the_extra(monkeypatch, checkpoints):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(ConfigValueError, match=r"recbole_cmi\[retrieval\]"):
        import_faiss()
    with pytest.raises(ConfigValueError, match=r"recbole_cmi\[retrieval\]"):
        _trainer(checkpoints["SASRec"], retrieval="faiss")
    user = _users(checkpoints["SASRec"], 1)[0]
    argv = ["--checkpoint", checkpoints["SASRec"], "--user", user, "--retrieval", "faiss"]
    status, out, err = call(verb("recommend"), argv)
    assert status == 2 and err == f"error: {MISSING_FAISS}\n" and out == ""


@pytest.mark.parametrize(
    "key, value",
    [("retrieval", "annoy"), ("faiss_index", "pq"), ("faiss_nprobe", 0), ("faiss_nlist", -1), ("faiss_hnsw_m", 1.5)],
)
def test_bad_retrieval_settings_name_the_key(tiny_data_root, tmp_path, key, value):
    with pytest.raises(ConfigValueError, match=rf"{key}=") as caught:
        Config("SASRec", "tiny", config_dict=tiny_settings(tiny_data_root, tmp_path, **{key: value}), read_argv=False)
    assert "\n" not in str(caught.value)


def test_a_model_that_does_not_score_by_inner_products_is_refused():
    class BERT4Rec:  # a stand-in: only the class name matters
        pass

    with pytest.raises(ConfigValueError, match="not BERT4Rec; use retrieval: exact"):
        check_model_supported(BERT4Rec())


def test_the_settings_defaults_are_the_yaml_defaults():
    import yaml

    from recbole_cmi.paths import properties_dir

    overall = yaml.safe_load((properties_dir() / "overall.yaml").read_text(encoding="utf-8"))
    assert RetrievalSettings.from_config(overall) == RetrievalSettings()
