"""eval_protocol: multi_target (recbole_cmi.data.protocol): metrics on a hand-computed case and against the former
hand-written implementation on random rankings, RecBole's own loo evaluation matched when every user has one target,
periods and splits checked by hand, and 1-epoch SASRec and CMI runs under the protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TINY_SETTINGS
from recbole.data.interaction import Interaction

from recbole_cmi.data.protocol import MultiTargetEvalLoader, evaluate_multi_target
from recbole_cmi.data.target_split import TEST, TRAIN, VALID, TargetSplit, build_split, period_labels
from recbole_cmi.errors import ConfigValueError, DatasetError
from recbole_cmi.pipeline import evaluate_checkpoint, prepare
from recbole_cmi.quick_start import run_recbole_cmi

DAY = 86_400
LOG2_3 = math.log2(3)

# ---------------------------------------------------------------- metrics, by hand

# Three evaluated users over items 1..6 (0 is padding), as (items in time order, labels).
# user 1: history [1, 2], targets {3, 4} (3 twice: counted once)
# user 2: history [5], targets {6} (5 comes back in the test period: already in the history, dropped)
# user 3: history [1, 2, 3], targets {4, 5, 6}
# user 4: history only; user 5: targets only -> neither is evaluated
HAND_USERS = [1] * 5 + [2] * 3 + [3] * 6 + [4] * 2 + [5]
HAND_ITEMS = [1, 2, 3, 4, 3] + [5, 6, 5] + [1, 2, 3, 4, 5, 6] + [2, 3] + [3]
HAND_LABELS = [0, 0, 2, 2, 2] + [0, 2, 2] + [0, 0, 0, 2, 2, 2] + [0, 0] + [2]
# Fixed scores per user (columns = item ids 0..6); the padding id scores highest and must never be ranked.
HAND_SCORES = {
    1: [9.0, 0.9, 0.8, 0.1, 0.7, 0.6, 0.5],  # ranking after masking 1, 2: 4, 5, 6, 3
    2: [9.0, 0.1, 0.2, 0.3, 0.4, 0.9, 0.35],  # after masking 5: 4, 6, 3, 2, 1
    3: [9.0, 0.9, 0.9, 0.9, 0.1, 0.2, 0.3],  # after masking 1, 2, 3: 6, 5, 4
}
EXPECTED = {  # per user (1, 2, 3), worked out from the rankings above
    "recall@1": [1 / 2, 0, 1 / 3],
    "recall@3": [1 / 2, 1, 1],
    "hit@1": [1, 0, 1],
    "hit@3": [1, 1, 1],
    "ndcg@1": [1, 0, 1],
    "ndcg@3": [1 / (1 + 1 / LOG2_3), 1 / LOG2_3, 1],
    "mrr@1": [1, 0, 1],
    "mrr@3": [1, 1 / 2, 1],
    "precision@1": [1, 0, 1],
    "precision@3": [1 / 3, 1 / 3, 1],
}
HAND_METRICS = ["recall", "hit", "ndcg", "mrr", "precision"]


class FixedScores(torch.nn.Module):
    def full_sort_predict(self, interaction):
        return torch.tensor([HAND_SCORES[int(u)] for u in interaction["user_id"]])


class RowScores(torch.nn.Module):
    """``full_sort_predict``: the rows of a fixed score matrix named by the batch's user ids."""

    def __init__(self, scores: torch.Tensor):
        super().__init__()
        self.scores = scores

    def full_sort_predict(self, interaction):
        return self.scores[interaction["user_id"]]


def _split(users, histories, targets) -> TargetSplit:
    """A TargetSplit from per-user history and (deduplicated) target lists."""
    history_items = np.array([i for h in histories for i in h], dtype=np.int64)
    return TargetSplit(
        users=np.asarray(users, dtype=np.int64),
        history_ptr=np.r_[0, np.cumsum([len(h) for h in histories])].astype(np.int64),
        history_rows=np.arange(len(history_items)),
        history_items=history_items,
        target_ptr=np.r_[0, np.cumsum([len(t) for t in targets])].astype(np.int64),
        target_items=np.array([i for t in targets for i in t], dtype=np.int64),
    )


def _evaluate(model, split: TargetSplit, topk, batch_size=128, decimals=12):
    config = {
        "eval_batch_size": batch_size,
        "metrics": HAND_METRICS,
        "topk": topk,
        "metric_decimal_place": decimals,
        "device": torch.device("cpu"),
    }
    interaction = Interaction({"user_id": torch.as_tensor(split.users)})
    return evaluate_multi_target(model, MultiTargetEvalLoader(config, None, split, interaction, "test"))


def test_build_split_keeps_users_with_history_and_new_targets():
    split = build_split(HAND_USERS, HAND_ITEMS, HAND_LABELS, TEST)
    assert split.users.tolist() == [1, 2, 3]
    assert [split.history_of(i) for i in range(3)] == [[1, 2], [5], [1, 2, 3]]
    assert [split.targets_of(i) for i in range(3)] == [[3, 4], [6], [4, 5, 6]]


def test_metrics_per_user_match_the_hand_computed_values():
    split = build_split(HAND_USERS, HAND_ITEMS, HAND_LABELS, TEST)
    for index, user in enumerate(split.users.tolist()):  # one user at a time: the mean is that user's value
        alone = _split([user], [split.history_of(index)], [split.targets_of(index)])
        values = _evaluate(FixedScores(), alone, [1, 3])
        assert set(values) == set(EXPECTED)
        for key, expected in EXPECTED.items():
            assert values[key] == pytest.approx(expected[index], abs=1e-9), (user, key)


def test_a_user_without_targets_is_refused_in_one_line():
    split = _split([1, 2], [[1], [2]], [[3], []])
    with pytest.raises(DatasetError, match="a user of the test split has no target item"):
        MultiTargetEvalLoader({}, None, split, Interaction({"user_id": torch.tensor([1, 2])}), "test")


def _former_metrics(scores, history, targets, topk, max_k):
    """The hand-written per-user metrics the protocol computed before it used RecBole's metric classes, on the
    same float32 ranking, the arithmetic in float64 (RecBole's) instead of float32."""
    batch, n_items = scores.shape
    scores = scores.clone()
    scores[:, 0] = -torch.inf
    scores[history] = -torch.inf
    max_k = min(max_k, n_items)
    top = scores.topk(max_k, dim=1).indices
    is_target = torch.zeros((batch, n_items), dtype=torch.bool)
    is_target[targets] = True
    hits = is_target.gather(1, top).double()
    n_targets = is_target.sum(dim=1).clamp(min=1).double()
    cumulative_hits = hits.cumsum(dim=1)
    discount = 1.0 / torch.log2(torch.arange(2, max_k + 2, dtype=torch.float64))
    dcg = (hits * discount).cumsum(dim=1)
    ideal = discount.cumsum(dim=0)
    first_hit = torch.where(hits.any(dim=1), hits.argmax(dim=1), torch.full_like(hits[:, 0], max_k, dtype=torch.long))
    out = {}
    for k in topk:
        column = min(k, max_k) - 1
        found = cumulative_hits[:, column]
        best = n_targets.clamp(max=column + 1).long() - 1  # ideal DCG over min(|targets|, K) ranks
        out[f"recall@{k}"] = found / n_targets
        out[f"hit@{k}"] = (found > 0).double()
        out[f"ndcg@{k}"] = dcg[:, column] / ideal[best]
        out[f"mrr@{k}"] = torch.where(first_hit <= column, 1.0 / (first_hit + 1).double(), 0.0)
        out[f"precision@{k}"] = found / k
    return out


def _random_case(rng):
    """Scores [users, items] (ties in half the cases), and per user a history and new targets (as build_split
    leaves them: deduplicated, none in the history), top-k cut-offs up to past the catalogue's end."""
    n_users, n_items = int(rng.integers(1, 13)), int(rng.integers(3, 40))
    if rng.random() < 0.5:
        scores = torch.from_numpy(rng.integers(0, 4, (n_users, n_items)).astype(np.float32))
    else:
        scores = torch.from_numpy(rng.standard_normal((n_users, n_items)).astype(np.float32))
    histories, targets = [], []
    for _ in range(n_users):
        items = rng.permutation(np.arange(1, n_items))
        n_history = int(rng.integers(0, len(items)))  # leaves at least one item for the targets
        n_targets = int(rng.integers(1, len(items) - n_history + 1))
        histories.append(items[:n_history].tolist())
        targets.append(items[n_history : n_history + n_targets].tolist())
    topk = sorted(set(rng.integers(1, n_items + 4, size=int(rng.integers(1, 5))).tolist()))
    return scores, histories, targets, topk


def test_recboles_metrics_match_the_former_hand_written_ones_on_random_rankings():
    rng = np.random.default_rng(21)
    for _ in range(60):
        scores, histories, targets, topk = _random_case(rng)
        users = list(range(len(histories)))
        pairs = [(u, i) for u in users for i in histories[u]]
        history = (
            torch.tensor([u for u, _ in pairs], dtype=torch.long),
            torch.tensor([i for _, i in pairs], dtype=torch.long),
        )
        target_pairs = [(u, i) for u in users for i in targets[u]]
        target = (torch.tensor([u for u, _ in target_pairs]), torch.tensor([i for _, i in target_pairs]))
        former = _former_metrics(scores, history, target, topk, max(topk))
        model = RowScores(scores)
        for user in users:  # per user
            values = _evaluate(model, _split([user], [histories[user]], [targets[user]]), topk)
            assert list(values) == [f"{m}@{k}" for m in HAND_METRICS for k in topk]
            for key, value in values.items():
                assert value == pytest.approx(float(former[key][user]), abs=1e-7), (key, user)
        means = _evaluate(model, _split(users, histories, targets), topk, batch_size=int(rng.integers(1, 5)))
        for key, value in means.items():  # averaged over users and batches
            assert value == pytest.approx(float(former[key].mean()), abs=1e-7), key


def test_evaluation_averages_over_evaluated_users_across_batches():
    split = build_split(HAND_USERS, HAND_ITEMS, HAND_LABELS, TEST)
    config = {
        "eval_batch_size": 2,  # batches of users (1, 2) and (3)
        "metrics": ["Recall", "Hit", "NDCG", "MRR", "Precision"],
        "topk": [1, 3],
        "metric_decimal_place": 6,
        "device": torch.device("cpu"),
    }
    interaction = Interaction({"user_id": torch.as_tensor(split.users)})
    loader = MultiTargetEvalLoader(config, None, split, interaction, "test")
    assert len(loader) == 2
    result = evaluate_multi_target(FixedScores(), loader)
    assert list(result) == [f"{m}@{k}" for m in HAND_METRICS for k in (1, 3)]
    for key, expected in EXPECTED.items():
        assert result[key] == pytest.approx(sum(expected) / 3, abs=1e-6), key
    assert result["recall@1"] == pytest.approx(5 / 18, abs=1e-6)
    assert result["recall@3"] == pytest.approx(5 / 6, abs=1e-6)
    assert result["hit@1"] == pytest.approx(2 / 3, abs=1e-6)


@pytest.mark.e2e
def test_one_target_per_user_gives_recboles_own_loo_numbers(tiny_config):
    """A multi-target split with each user's loo test item as the only target and the items before it as the
    history, scored from the same checkpoint: equal to RecBole's full-sort evaluation under ``eval_protocol: loo``,
    history items excluded (``exclude_history_items``) or ranked."""
    from recbole_cmi.benchmark.accuracy_worker import ranking_convention
    from recbole_cmi.trainer import get_trainer

    metrics = ["Recall", "NDCG", "Hit", "MRR", "Precision"]
    # MAX_ITEM_LIST_LENGTH above the longest sequence: the loo input list is the user's whole history.
    config = tiny_config(metrics=metrics, valid_metric="NDCG@10", MAX_ITEM_LIST_LENGTH=20, topk=[1, 5, 10, 20])
    config, _, (train, valid, test), model = prepare("SASRec", "tiny", None, config)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.fit(train, valid, saved=False, show_progress=False)

    rows = test._dataset.inter_feat  # loo: one test row per user, its input list and its last item
    lengths = rows["item_length"].tolist()
    assert len(set(rows["user_id"].tolist())) == len(rows) and max(lengths) < 20
    users = np.repeat(rows["user_id"].numpy(), np.add(lengths, 1))
    items = np.concatenate(
        [[*seq[:n].tolist(), target] for seq, n, target in zip(rows["item_id_list"], lengths, rows["item_id"].tolist())]
    )
    labels = np.concatenate([[TRAIN] * n + [TEST] for n in lengths])
    split = build_split(users, items, labels, TEST)
    assert len(split) == len(rows) and np.array_equal(split.target_ptr, np.arange(len(rows) + 1))
    fields = ("user_id", "item_id_list", "item_length")
    loader = MultiTargetEvalLoader(config, None, split, Interaction({f: rows[f] for f in fields}), "test")
    results = {}
    for exclude in (True, False):
        with ranking_convention(trainer, test, exclude), ranking_convention(trainer, loader, exclude):
            results[exclude] = recbole = trainer.evaluate(test, load_best_model=False)
            multi_target = evaluate_multi_target(trainer.model, loader)
        assert list(recbole) == [f"{m.lower()}@{k}" for m in metrics for k in (1, 5, 10, 20)]
        assert multi_target == recbole, exclude
        assert recbole["recall@20"] > 0 and recbole["recall@10"] == recbole["hit@10"]
    assert results[True] != results[False]  # the history items did take top-K places when ranked


# ---------------------------------------------------------------- periods


def test_day_periods_are_the_datasets_last_two_days_with_data():
    users = [1, 1, 1, 1, 2, 2]
    days = [0, 1, 3, 3, 0, 1]  # day 2 has no data: validation is day 1, test day 3
    labels = period_labels(users, [d * DAY + 5 for d in days], "day")
    assert labels.tolist() == [TRAIN, VALID, TEST, TEST, TRAIN, VALID]


def test_user_day_periods_follow_each_users_own_days():
    users = [1, 1, 1, 2, 2, 2, 3]
    days = [0, 4, 5, 1, 1, 2, 7]
    labels = period_labels(users, [d * DAY for d in days], "user_day")
    assert labels.tolist() == [TRAIN, VALID, TEST, VALID, VALID, TEST, TEST]


def test_last_n_and_last_fraction_periods():
    users = [1] * 5 + [2] * 10 + [3]
    times = list(range(16))
    assert period_labels(users, times, "last_n", n=2).tolist() == (
        [TRAIN, VALID, VALID, TEST, TEST] + [TRAIN] * 6 + [VALID] * 2 + [TEST] * 2 + [TEST]
    )
    # cuts floor(L x 0.8) and floor(cut x 0.8): L=5 -> 4 and 3; L=10 -> 8 and 6; L=1 -> 0 (no history)
    assert period_labels(users, times, "last_fraction", fraction=0.2).tolist() == (
        [TRAIN] * 3 + [VALID, TEST] + [TRAIN] * 6 + [VALID] * 2 + [TEST] * 2 + [TEST]
    )


def test_day_split_on_order_only_timestamps_names_the_alternatives():
    with pytest.raises(DatasetError, match="last_n or last_fraction"):
        period_labels([1, 1, 1], [1.0, 2.0, 3.0], "day")


# ---------------------------------------------------------------- splits of a hand-made dataset

# day 0..3: the test period is day 3, validation day 2, training days 0-1.
HAND_INTER = [
    ("u1", "i1", 0), ("u1", "i2", 0), ("u1", "i3", 1), ("u1", "i4", 2), ("u1", "i5", 3), ("u1", "i6", 3),
    ("u2", "i2", 0), ("u2", "i7", 2), ("u2", "i8", 2), ("u2", "i2", 3),  # test target i2 is in the history
    ("u3", "i9", 3),  # no history before any period
    ("u4", "i3", 1), ("u4", "i5", 1),  # training only
    ("u5", "i1", 2), ("u5", "i6", 3),  # no history before validation; test history [i1]
]  # fmt: skip


@pytest.fixture
def hand_config(tmp_path):
    root = tmp_path / "data"
    (root / "hand").mkdir(parents=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{day * DAY + 60 * n}" for n, (u, i, day) in enumerate(HAND_INTER)]
    (root / "hand" / "hand.inter").write_text("\n".join(lines) + "\n")

    def make(**overrides):
        settings = dict(
            TINY_SETTINGS,
            data_path=str(root),
            checkpoint_dir=str(tmp_path / "saved"),
            user_inter_num_interval="[0,inf)",
            MAX_ITEM_LIST_LENGTH=3,
            topk=[1, 3],
            metrics=["Recall", "Hit"],
            valid_metric="Recall@3",
            eval_protocol="multi_target",
        )
        settings.update(overrides)
        return settings

    return make


def _tokens(dataset, field, ids):
    return [dataset.id2token(field, int(i)) for i in ids]


def _eval_rows(loader):
    dataset = loader._dataset
    rows = {}
    for index, user in enumerate(loader.split.users):
        history = _tokens(dataset, "item_id", loader.split.history_of(index))
        targets = sorted(_tokens(dataset, "item_id", loader.split.targets_of(index)))
        length = int(loader.interaction["item_length"][index])
        model_input = _tokens(dataset, "item_id", loader.interaction["item_id_list"][index][:length])
        rows[dataset.id2token("user_id", int(user))] = (history, targets, model_input)
    return rows


def test_hand_dataset_splits_by_day(hand_config):
    _, _, (train, valid, test), _ = prepare("SASRec", "hand", config_dict=hand_config())
    train_rows = train._dataset.inter_feat
    dataset = train._dataset
    got = sorted(
        (
            dataset.id2token("user_id", int(u)),
            _tokens(dataset, "item_id", seq[:n]),
            dataset.id2token("item_id", int(target)),
        )
        for u, seq, n, target in zip(
            train_rows["user_id"], train_rows["item_id_list"], train_rows["item_length"], train_rows["item_id"]
        )
    )
    assert got == [("u1", ["i1"], "i2"), ("u1", ["i1", "i2"], "i3"), ("u4", ["i3"], "i5")]
    assert _eval_rows(valid) == {
        "u1": (["i1", "i2", "i3"], ["i4"], ["i1", "i2", "i3"]),
        "u2": (["i2"], ["i7", "i8"], ["i2"]),
    }
    assert _eval_rows(test) == {
        "u1": (["i1", "i2", "i3", "i4"], ["i5", "i6"], ["i2", "i3", "i4"]),  # the model sees the last 3
        "u5": (["i1"], ["i6"], ["i1"]),
    }


def test_hand_dataset_splits_by_last_n(hand_config):
    config = hand_config(multi_target_split="last_n", multi_target_n=1)
    _, _, (train, valid, test), _ = prepare("GRU4Rec", "hand", config_dict=config)
    assert _eval_rows(valid) == {
        "u1": (["i1", "i2", "i3", "i4"], ["i5"], ["i2", "i3", "i4"]),
        "u2": (["i2", "i7"], ["i8"], ["i2", "i7"]),
    }
    assert _eval_rows(test) == {  # u2's last item i2 is already in its history: u2 is not evaluated
        "u1": (["i1", "i2", "i3", "i4", "i5"], ["i6"], ["i3", "i4", "i5"]),
        "u4": (["i3"], ["i5"], ["i3"]),
        "u5": (["i1"], ["i6"], ["i1"]),
    }
    assert len(train._dataset) == 3 + 1  # u1: prefixes of i1..i4 -> i2, i3, i4; u2: [i2] -> i7


@pytest.mark.e2e
def test_a_general_model_trains_and_is_evaluated_under_the_protocol(hand_config):
    result = run_recbole_cmi("BPR", "hand", config_dict=hand_config(), saved=False)
    assert list(result["test_result"]) == ["recall@1", "recall@3", "hit@1", "hit@3"]
    assert all(0.0 <= v <= 1.0 for v in result["test_result"].values())


def test_protocol_config_errors_are_one_line(hand_config):
    with pytest.raises(ConfigValueError, match="eval_protocol='bogus'"):
        prepare("SASRec", "hand", config_dict=hand_config(eval_protocol="bogus"))
    with pytest.raises(ConfigValueError, match="multi_target_split='week'"):
        prepare("SASRec", "hand", config_dict=hand_config(multi_target_split="week"))
    with pytest.raises(ConfigValueError, match="computes recall, hit, ndcg, mrr, precision"):
        prepare("SASRec", "hand", config_dict=hand_config(metrics=["Recall", "GAUC"], valid_metric="Recall@3"))


# ---------------------------------------------------------------- end to end


@pytest.mark.e2e
@pytest.mark.parametrize("model", ["SASRec", "CMI"])
def test_one_epoch_under_multi_target(tiny_config, model):
    config = tiny_config(eval_protocol="multi_target", metrics=["Recall", "Hit", "NDCG"], valid_metric="Recall@50")
    result = run_recbole_cmi(model, "tiny", config_dict=config)
    keys = [f"{m}@{k}" for m in ("recall", "hit", "ndcg") for k in (10, 20, 50)]
    assert list(result["test_result"]) == keys
    assert list(result["best_valid_result"]) == keys
    assert result["best_valid_score"] == result["best_valid_result"]["recall@50"]  # early stopping's metric
    for value in result["test_result"].values():
        assert 0.0 <= value <= 1.0
    test = result["test_result"]
    assert test["recall@10"] <= test["recall@20"] <= test["recall@50"]
    assert test["recall@50"] <= test["hit@50"]  # a hit counts at least 1/|targets|
    if model == "SASRec":  # the checkpoint remembers the protocol
        assert evaluate_checkpoint(result["saved_model_file"]) == test


def test_tiny_dataset_split_matches_an_independent_computation(tiny_config):
    config, _, (train, valid, test), _ = prepare(
        "SASRec", "tiny", config_dict=tiny_config(eval_protocol="multi_target")
    )
    frame = _tiny_frame(config)
    days = frame["timestamp"] // DAY
    test_day, valid_day = sorted(days.unique())[-1], sorted(days.unique())[-2]
    dataset = train._dataset
    expected_train = sum(max(len(g[g["timestamp"] // DAY < valid_day]) - 1, 0) for _, g in frame.groupby("user_id"))
    assert len(dataset) == expected_train
    assert (train._dataset.inter_feat["timestamp"] // DAY < valid_day).all()
    for loader, day in ((valid, valid_day), (test, test_day)):
        expected = {}
        for user, group in frame.groupby("user_id"):
            history = group[group["timestamp"] // DAY < day]["item_id"].tolist()
            targets = sorted(set(group[group["timestamp"] // DAY == day]["item_id"]) - set(history))
            if history and targets:
                expected[user] = (history, targets, history[-10:])
        assert {u: (h, t, m) for u, (h, t, m) in _eval_rows(loader).items()} == expected


def _tiny_frame(config):
    import pandas as pd

    path = f"{config['data_path']}/tiny.inter"  # RecBole's data_path ends with the dataset folder
    frame = pd.read_csv(path, sep="\t")
    frame.columns = [c.split(":")[0] for c in frame.columns]
    frame = frame[frame.groupby("user_id")["item_id"].transform("size") >= 3]  # user_inter_num_interval [3,inf)
    return frame.sort_values(["user_id", "timestamp"], kind="stable")


def test_training_rows_of_the_protocol_never_include_validation_or_test_items(hand_config):
    _, _, (train, valid, test), _ = prepare("SASRec", "hand", config_dict=hand_config())
    assert np.array_equal(np.sort(train._dataset.inter_feat["timestamp"].numpy() // DAY), [0, 1, 1])
