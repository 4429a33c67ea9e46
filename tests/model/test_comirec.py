"""ComiRec-SA / ComiRec-DR: the maths on tiny tensors, then 1-epoch runs through the runner and the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import finite_metrics, script_main
from recbole.data.interaction import Interaction

from recbole_cmi.errors import ConfigValueError
from recbole_cmi.model.comirec_base import ComiRecBase
from recbole_cmi.model.comirec_dr import CapsuleInterests, ComiRecDR, dynamic_routing, squash
from recbole_cmi.model.comirec_sa import ComiRecSA, SelfAttentiveInterests
from recbole_cmi.pipeline import evaluate_checkpoint
from recbole_cmi.quick_start import run_recbole_cmi

N_ITEMS = 9  # including padding id 0
SEQ_LEN = 5


class _Catalogue:
    """The one thing SequentialRecommender asks of a dataset: the number of item ids."""

    def num(self, field):
        return N_ITEMS


def _model_config(**overrides):
    config = {
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "LIST_SUFFIX": "_list",
        "ITEM_LIST_LENGTH_FIELD": "item_length",
        "NEG_PREFIX": "neg_",
        "MAX_ITEM_LIST_LENGTH": SEQ_LEN,
        "device": torch.device("cpu"),
        "embedding_size": 4,
        "num_interest": 3,
        "score_chunk_size": 0,
        "loss_type": "CE",
        "add_pos": True,
        "routing_times": 3,
    }
    config.update(overrides)
    return config


def _build(model_class, **overrides):
    torch.manual_seed(0)
    return model_class(_model_config(**overrides), _Catalogue())


def _batch():
    item_seq = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0], [8, 0, 0, 0, 0]])
    item_seq_len = torch.tensor([5, 2, 1])
    return item_seq, item_seq_len


def _valid_mask(item_seq_len, length=SEQ_LEN):
    return torch.arange(length).unsqueeze(0) < item_seq_len.unsqueeze(1)


# --------------------------------------------------------------------------- ComiRec-SA attention


def test_sa_attention_is_softmax_over_valid_positions_only():
    torch.manual_seed(0)
    layer = SelfAttentiveInterests(embedding_size=4, num_interest=3, max_seq_length=SEQ_LEN, add_pos=True)
    _, item_seq_len = _batch()
    mask = _valid_mask(item_seq_len)
    history = torch.randn(3, SEQ_LEN, 4) * mask.unsqueeze(-1)

    interests, attention = layer(history, mask)

    assert interests.shape == (3, 3, 4) and attention.shape == (3, 3, SEQ_LEN)
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 3))
    assert torch.all(attention.masked_select(~mask.unsqueeze(1).expand_as(attention)) == 0)
    # Brute force: W2 tanh(W1 (h_t + p_t)) per position, softmax over the valid positions of each user.
    for b, length in enumerate(item_seq_len.tolist()):
        keys = history[b, :length] + layer.position_embedding.weight[:length]
        logits = layer.heads(torch.tanh(layer.hidden(keys))).T  # [K, length]
        torch.testing.assert_close(attention[b, :, :length], torch.softmax(logits, dim=-1))
        torch.testing.assert_close(interests[b], torch.softmax(logits, dim=-1) @ history[b, :length])


def test_sa_position_embedding_shapes_attention_but_not_values():
    torch.manual_seed(0)
    layer = SelfAttentiveInterests(embedding_size=4, num_interest=2, max_seq_length=SEQ_LEN, add_pos=True)
    mask = torch.ones(1, SEQ_LEN, dtype=torch.bool)
    history = torch.randn(1, SEQ_LEN, 4)

    interests, attention = layer(history, mask)
    with torch.no_grad():
        layer.position_embedding.weight.mul_(-3.0)
    moved_interests, moved_attention = layer(history, mask)

    assert not torch.allclose(attention, moved_attention)
    torch.testing.assert_close(interests, attention @ history)
    torch.testing.assert_close(moved_interests, moved_attention @ history)
    positions = layer.position_embedding.weight.unsqueeze(0)
    assert not torch.allclose(moved_interests, moved_attention @ (history + positions))


def test_sa_without_positions_ignores_order_of_attention_keys():
    torch.manual_seed(0)
    layer = SelfAttentiveInterests(embedding_size=4, num_interest=2, max_seq_length=SEQ_LEN, add_pos=False)
    assert layer.position_embedding is None
    mask = torch.ones(1, SEQ_LEN, dtype=torch.bool)
    history = torch.randn(1, SEQ_LEN, 4)
    reversed_history = history.flip(1)
    interests, _ = layer(history, mask)
    reversed_interests, _ = layer(reversed_history, mask)
    torch.testing.assert_close(interests, reversed_interests)


# --------------------------------------------------------------------------- ComiRec-DR routing


def test_squash_matches_hand_value_and_stays_below_one():
    vector = torch.tensor([3.0, 4.0])  # |s|^2 = 25
    torch.testing.assert_close(squash(vector), torch.tensor([0.6, 0.8]) * 25 / 26)
    assert squash(vector).norm().item() == pytest.approx(25 / 26)
    torch.manual_seed(0)
    # float64: in float32 a norm of 1 - 1e-7 rounds to 1.
    many = torch.randn(50, 8, dtype=torch.float64) * torch.logspace(-3, 3, 50, dtype=torch.float64).unsqueeze(1)
    assert torch.all(squash(many).norm(dim=-1) < 1)
    assert torch.equal(squash(torch.zeros(3)), torch.zeros(3))


def test_routing_couples_each_item_over_interests_and_skips_padding():
    torch.manual_seed(0)
    _, item_seq_len = _batch()
    mask = _valid_mask(item_seq_len)
    item_hat = torch.randn(3, 4, SEQ_LEN, 6) * mask[:, None, :, None]

    interests, coupling = dynamic_routing(item_hat, mask, routing_times=3)

    assert interests.shape == (3, 4, 6) and coupling.shape == (3, 4, SEQ_LEN)
    torch.testing.assert_close(coupling.sum(dim=1), mask.float())  # softmax over K, not over positions
    assert torch.all(coupling.masked_select(~mask.unsqueeze(1).expand_as(coupling)) == 0)
    assert not torch.allclose(coupling[0], torch.full_like(coupling[0], 1 / 4))  # the routing moved


def test_routing_matches_a_loop_written_from_the_official_code():
    torch.manual_seed(1)
    mask = torch.tensor([[True, True, True, False]])
    item_hat = torch.randn(1, 2, 4, 3) * mask[:, None, :, None]
    hat = item_hat[0].tolist()  # [K][L][d]

    logits = [[0.0] * 4 for _ in range(2)]
    for _ in range(3):
        coupling = [[0.0] * 4 for _ in range(2)]
        for t in range(3):  # valid positions only; padded ones keep c = 0
            norm = sum(math.exp(logits[k][t]) for k in range(2))
            for k in range(2):
                coupling[k][t] = math.exp(logits[k][t]) / norm
        capsules = []
        for k in range(2):
            s = [sum(coupling[k][t] * hat[k][t][i] for t in range(4)) for i in range(3)]
            sq = sum(x * x for x in s)
            capsules.append([sq / (1 + sq) / math.sqrt(sq + 1e-9) * x for x in s])
        for k in range(2):
            for t in range(4):
                logits[k][t] += sum(hat[k][t][i] * capsules[k][i] for i in range(3))

    interests, last_coupling = dynamic_routing(item_hat, mask, routing_times=3)
    torch.testing.assert_close(interests[0], torch.tensor(capsules))
    torch.testing.assert_close(last_coupling[0], torch.tensor(coupling))


def test_routing_gradients_flow_only_through_the_last_iteration():
    torch.manual_seed(0)
    layer = CapsuleInterests(embedding_size=3, num_interest=2, max_seq_length=4, routing_times=3)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    history = torch.randn(2, 4, 3) * mask.unsqueeze(-1)
    weights = torch.randn(2, 2, 3)

    def bilinear_grad(interests_of):
        layer.zero_grad()
        (interests_of() * weights).sum().backward()
        return layer.bilinear.grad.clone()

    def routed():
        return layer(history, mask)[0]

    def last_iteration_by_hand():
        # The coupling of the last iteration is a constant; only the final s = sum_t c ê carries gradient.
        item_hat = layer.predictions(history)
        with torch.no_grad():
            _, coupling = dynamic_routing(item_hat, mask, routing_times=3)
        return squash(torch.einsum("bkl,bkld->bkd", coupling, item_hat))

    def routed_without_stop_gradient():
        return dynamic_routing(layer.predictions(history), mask, routing_times=3, stop_gradient=False)[0]

    grad = bilinear_grad(routed)
    torch.testing.assert_close(grad, bilinear_grad(last_iteration_by_hand))
    assert not torch.allclose(grad, bilinear_grad(routed_without_stop_gradient), atol=1e-6)
    torch.testing.assert_close(routed(), routed_without_stop_gradient())  # same values, other gradients
    assert torch.all(grad[3] == 0)  # position 3 is padding for every user


def test_bilinear_predictions_use_one_map_per_position_and_interest():
    torch.manual_seed(0)
    layer = CapsuleInterests(embedding_size=3, num_interest=2, max_seq_length=4)
    history = torch.randn(2, 4, 3)
    item_hat = layer.predictions(history)
    for t in range(4):
        for k in range(2):
            expected = history[:, t] @ layer.bilinear[t, k * 3 : (k + 1) * 3].T
            torch.testing.assert_close(item_hat[:, k, t], expected)


def test_dr_bilinear_init_is_standard_normal():
    model = _build(ComiRecDR, embedding_size=8, num_interest=4, MAX_ITEM_LIST_LENGTH=50)
    weights = model.interest_extractor.bilinear
    assert weights.shape == (50, 32, 8)
    assert abs(weights.mean().item()) < 0.02 and weights.std().item() == pytest.approx(1.0, abs=0.02)


# --------------------------------------------------------------------------- readout, losses, scoring


@pytest.mark.parametrize("model_class", [ComiRecSA, ComiRecDR])
def test_forward_masks_history_and_returns_k_interests(model_class):
    model = _build(model_class)
    item_seq, item_seq_len = _batch()
    interests = model(item_seq, item_seq_len)
    assert interests.shape == (3, 3, 4)
    # Whatever sits at padded positions does not matter.
    noisy_seq = item_seq.masked_fill(~_valid_mask(item_seq_len), 5)
    torch.testing.assert_close(model(noisy_seq, item_seq_len), interests)
    assert torch.all(model.item_embedding.weight[0] == 0)


def test_readout_picks_the_interest_closest_to_the_target():
    interests = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]], [[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]])
    targets = torch.tensor([[3.0, 1.0], [-1.0, -2.0]])  # scores [3, 2, -4] and [-1, -4, 3]
    chosen = ComiRecBase.readout(interests, targets)
    torch.testing.assert_close(chosen, torch.tensor([[1.0, 0.0], [-1.0, -1.0]]))


@pytest.mark.parametrize("model_class", [ComiRecSA, ComiRecDR])
def test_ce_loss_is_softmax_over_catalogue_with_readout(model_class):
    model = _build(model_class)
    item_seq, item_seq_len = _batch()
    targets = torch.tensor([6, 3, 2])
    loss = model.calculate_loss(
        Interaction({"item_id_list": item_seq, "item_length": item_seq_len, "item_id": targets})
    )

    interests = model(item_seq, item_seq_len)
    table = model.item_embedding.weight
    expected = 0.0
    for b in range(3):
        best = max(range(3), key=lambda k: (interests[b, k] @ table[targets[b]]).item())
        logits = table @ interests[b, best]
        expected += -torch.log_softmax(logits, dim=0)[targets[b]]
    torch.testing.assert_close(loss, expected / 3)


@pytest.mark.parametrize("model_class", [ComiRecSA, ComiRecDR])
def test_bpr_loss_scores_readout_against_positive_and_negative(model_class):
    model = _build(model_class, loss_type="BPR")
    item_seq, item_seq_len = _batch()
    pos, neg = torch.tensor([6, 3, 2]), torch.tensor([1, 8, 4])
    batch = Interaction({"item_id_list": item_seq, "item_length": item_seq_len, "item_id": pos, "neg_item_id": neg})
    loss = model.calculate_loss(batch)

    interests = model(item_seq, item_seq_len)
    user = model.readout(interests, model.item_embedding(pos))
    margin = (user * (model.item_embedding(pos) - model.item_embedding(neg))).sum(-1)
    torch.testing.assert_close(loss, -torch.log(1e-10 + torch.sigmoid(margin)).mean())


@pytest.mark.parametrize("model_class", [ComiRecSA, ComiRecDR])
@pytest.mark.parametrize("chunk", [0, 2, 4])
def test_full_sort_predict_is_max_over_interests(model_class, chunk):
    model = _build(model_class, score_chunk_size=chunk)
    item_seq, item_seq_len = _batch()
    batch = Interaction({"item_id_list": item_seq, "item_length": item_seq_len})
    scores = model.full_sort_predict(batch)

    assert scores.shape == (3, N_ITEMS)
    interests = model(item_seq, item_seq_len)
    table = model.item_embedding.weight
    for b in range(3):
        for n in range(N_ITEMS):
            brute = max((interests[b, k] @ table[n]).item() for k in range(3))
            assert scores[b, n].item() == pytest.approx(brute, abs=1e-6)
    # predict() scores one candidate per row by the same rule.
    candidates = torch.tensor([4, 0, 8])
    paired = model.predict(Interaction({"item_id_list": item_seq, "item_length": item_seq_len, "item_id": candidates}))
    torch.testing.assert_close(paired, scores[torch.arange(3), candidates])


def _per_interest_topn_merge(interests, table, top_n):
    """The official serving rule: top-N per interest, pool, sort by score, drop duplicates, keep N."""
    merged = []
    for user in interests:
        pooled = []
        for interest in user:
            scores = table @ interest
            values, ids = scores.topk(top_n)
            pooled += list(zip(values.tolist(), ids.tolist(), strict=True))
        seen, ranked = set(), []
        for _, item in sorted(pooled, key=lambda pair: -pair[0]):
            if item not in seen:
                seen.add(item)
                ranked.append(item)
        merged.append(ranked[:top_n])
    return merged


def test_full_sort_top_n_equals_per_interest_merge_on_a_toy_example(monkeypatch):
    model = _build(ComiRecSA, embedding_size=2, num_interest=2)
    items = torch.tensor(
        [[0.0, 0.0], [0.9, 0.0], [0.0, 0.8], [0.6, 0.5], [0.5, 0.55], [-1.0, 0.1], [0.3, 0.0], [0.0, 0.35], [0.2, 0.7]]
    )
    with torch.no_grad():
        model.item_embedding.weight.copy_(items)
    interests = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    monkeypatch.setattr(model, "forward", lambda item_seq, item_seq_len: interests)

    scores = model.full_sort_predict(Interaction({"item_id_list": torch.ones(1, 5), "item_length": torch.ones(1)}))
    # Hand values: item 1 -> 0.9, 2 -> 0.8, 8 -> 0.7, 3 -> 0.6, 4 -> 0.55, 7 -> 0.35, 6 -> 0.3, 5 -> 0.1.
    assert scores.topk(4).indices.tolist() == [[1, 2, 8, 3]]
    assert _per_interest_topn_merge(interests, items, top_n=4) == [[1, 2, 8, 3]]


@pytest.mark.parametrize("model_class", [ComiRecSA, ComiRecDR])
def test_full_sort_top_n_equals_per_interest_merge_on_random_weights(model_class):
    model = _build(model_class, embedding_size=6, num_interest=3)
    item_seq, item_seq_len = _batch()
    scores = model.full_sort_predict(Interaction({"item_id_list": item_seq, "item_length": item_seq_len}))
    interests = model(item_seq, item_seq_len)
    assert scores.topk(5).indices.tolist() == _per_interest_topn_merge(interests, model.item_embedding.weight, 5)


# --------------------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    ("model_class", "key", "value"),
    [
        (ComiRecSA, "num_interest", 0),
        (ComiRecDR, "num_interest", -2),
        (ComiRecSA, "num_interest", 2.5),
        (ComiRecSA, "embedding_size", 0),
        (ComiRecDR, "routing_times", 0),
        (ComiRecSA, "score_chunk_size", -1),
        (ComiRecSA, "add_pos", "yes"),
        (ComiRecDR, "loss_type", "BCE"),
    ],
)
def test_bad_settings_name_key_value_and_range(model_class, key, value):
    with pytest.raises(ConfigValueError) as err:
        _build(model_class, **{key: value})
    message = str(err.value)
    assert key in message and repr(value) in message
    assert any(word in message for word in (">=", "True or False", "one of"))


# --------------------------------------------------------------------------- end to end


@pytest.mark.e2e
@pytest.mark.parametrize(("model", "loss_type"), [("ComiRecSA", "CE"), ("ComiRecSA", "BPR"), ("ComiRecDR", "BPR")])
def test_one_epoch_run(tiny_config, model, loss_type):
    result = run_recbole_cmi(model, "tiny", config_dict=tiny_config(num_interest=2, loss_type=loss_type), saved=False)
    assert result["config"]["loss_type"] == loss_type
    sampling = result["config"]["train_neg_sample_args"]["distribution"]
    assert sampling == ("none" if loss_type == "CE" else "uniform")
    assert finite_metrics(result["test_result"]) and "ndcg@20" in result["test_result"]
    assert finite_metrics(result["best_valid_result"])


@pytest.mark.e2e
def test_one_epoch_run_reloads_the_best_checkpoint(tiny_config):
    result = run_recbole_cmi("ComiRecDR", "tiny", config_dict=tiny_config(num_interest=2), saved=True)
    checkpoint = Path(result["saved_model_file"])
    assert checkpoint.is_file()
    assert result["config"]["learning_rate"] == 0.005 and result["config"]["routing_times"] == 3
    assert finite_metrics(result["test_result"])
    # The test metrics came from the reloaded best model: evaluating the file again gives the same numbers.
    again = evaluate_checkpoint(str(checkpoint), splits="test")
    assert dict(again) == pytest.approx(dict(result["test_result"]))


@pytest.mark.e2e
def test_cli_runs_one_epoch(tiny_config, tmp_path, capsys):
    settings = tiny_config(num_interest=2)
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    main = script_main()

    code = main(
        ["--model=ComiRecSA", "--dataset=tiny", f"--config_files={config_file}", "--saved=False", "--add_pos=False"]
    )

    out = capsys.readouterr().out
    assert code == 0
    assert "test result: {" in out and "ndcg@20" in out


def test_cli_reports_a_bad_num_interest_in_one_line(tiny_config, tmp_path, capsys):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config()))
    main = script_main()

    code = main(["--model=ComiRecDR", "--dataset=tiny", f"--config_files={config_file}", "--num_interest=0"])

    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == "error: invalid config value num_interest=0 (an integer >= 1)"
