"""CL4SRec: NT-Xent against a brute-force SimCLR loss, the SASRec encoder, the mask row, the loss
tuple, configuration errors, then 1-epoch runs through the runner and the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT, finite_metrics, script_main
from recbole.data.interaction import Interaction

from recbole_cmi.compat import disable_anomaly_mode
from recbole_cmi.data.augmentation import ContrastiveViews
from recbole_cmi.errors import ConfigValueError
from recbole_cmi.model.cl4srec import CL4SRec
from recbole_cmi.model.layers import info_nce
from recbole_cmi.pipeline import evaluate_checkpoint, prepare
from recbole_cmi.quick_start import run_recbole_cmi
from recbole_cmi.utils import get_model

N_ITEMS = 9  # including padding id 0; the mask token is id 9
MASK_ID = N_ITEMS
SEQ_LEN = 5


class _Catalogue:
    """What CL4SRec and its hook ask of a dataset: the number of item ids."""

    item_num = N_ITEMS

    def num(self, field):
        return N_ITEMS


class _Config(dict):
    """A dict that answers None for a missing key, as RecBole's Config does."""

    def __missing__(self, key):
        return None


def _model_config(**overrides):
    config = {
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "LIST_SUFFIX": "_list",
        "ITEM_LIST_LENGTH_FIELD": "item_length",
        "NEG_PREFIX": "neg_",
        "MAX_ITEM_LIST_LENGTH": SEQ_LEN,
        "device": torch.device("cpu"),
        "n_layers": 2,
        "n_heads": 2,
        "hidden_size": 8,
        "inner_size": 16,
        "hidden_dropout_prob": 0.5,
        "attn_dropout_prob": 0.5,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "initializer_range": 0.02,
        "loss_type": "CE",
        "cl_weight": 0.1,
        "cl_temperature": 1.0,
        "cl_similarity": "dot",
        "cl_augmentation": "random",
        "crop_eta": 0.6,
        "mask_gamma": 0.3,
        "reorder_beta": 0.6,
    }
    config.update(overrides)
    return _Config(config)


def _build(eval_mode=True, **overrides):
    torch.manual_seed(0)
    model = CL4SRec(_model_config(**overrides), _Catalogue())
    return model.eval() if eval_mode else model


def _batch():
    item_seq = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0], [8, 0, 0, 0, 0]])
    return item_seq, torch.tensor([5, 2, 1])


def _simclr_nt_xent(view_a, view_b, temperature, similarity):
    """SimCLR's NT-Xent written out: 2N anchors, one positive each, the other 2N - 2 views negatives."""
    views = torch.cat([view_a, view_b])
    n = view_a.shape[0]

    def sim(u, v):
        if similarity == "cos":
            return (u @ v) / (u.norm() * v.norm())
        return u @ v

    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        logits = torch.stack([sim(views[i], views[k]) / temperature for k in range(2 * n) if k != i])
        others = [k for k in range(2 * n) if k != i]
        total = total - torch.log_softmax(logits, dim=0)[others.index(positive)]
    return total / (2 * n)


# --------------------------------------------------------------------------- NT-Xent


@pytest.mark.parametrize("similarity", ["dot", "cos"])
@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("temperature", [1.0, 0.2])
def test_nt_xent_equals_brute_force_simclr(similarity, n, temperature):
    generator = torch.Generator().manual_seed(n)
    view_a = torch.randn(n, 6, generator=generator, dtype=torch.float64)
    view_b = torch.randn(n, 6, generator=generator, dtype=torch.float64)
    loss = info_nce(view_a, view_b, temperature, similarity=similarity, in_view_negatives=True, combine="mean")
    torch.testing.assert_close(loss, _simclr_nt_xent(view_a, view_b, temperature, similarity))


def test_nt_xent_of_a_batch_is_not_tied_to_the_first_batch_size():
    """DuoRec precomputes its negative mask for train_batch_size; ours is built per call."""
    generator = torch.Generator().manual_seed(0)
    views = torch.randn(2, 7, 4, generator=generator, dtype=torch.float64)
    full = info_nce(views[0], views[1], 1.0, similarity="dot", in_view_negatives=True, combine="mean")
    last = info_nce(views[0, :3], views[1, :3], 1.0, similarity="dot", in_view_negatives=True, combine="mean")
    torch.testing.assert_close(full, _simclr_nt_xent(views[0], views[1], 1.0, "dot"))
    torch.testing.assert_close(last, _simclr_nt_xent(views[0, :3], views[1, :3], 1.0, "dot"))


# --------------------------------------------------------------------------- encoder and scoring


def test_item_table_has_a_mask_row_and_full_sort_ignores_it():
    model = _build()
    assert model.item_embedding.num_embeddings == N_ITEMS + 1
    item_seq, item_seq_len = _batch()
    batch = Interaction({"item_id_list": item_seq, "item_length": item_seq_len})
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        assert scores.shape == (3, N_ITEMS)
        user = model(item_seq, item_seq_len)
        torch.testing.assert_close(scores, user @ model.item_embedding.weight[:N_ITEMS].T)
        # The mask row is no candidate: scaling it changes no score of a history without the token.
        model.item_embedding.weight[MASK_ID].mul_(100.0).add_(torch.arange(8.0))
        torch.testing.assert_close(model.full_sort_predict(batch), scores)
        # predict() scores one candidate per row by the same rule.
        candidates = torch.tensor([4, 0, 8])
        paired = model.predict(
            Interaction({"item_id_list": item_seq, "item_length": item_seq_len, "item_id": candidates})
        )
        torch.testing.assert_close(paired, scores[torch.arange(3), candidates])


def test_mask_token_is_an_attended_input_not_padding():
    model = _build()
    masked = torch.tensor([[1, MASK_ID, 3, 0, 0]])
    length = torch.tensor([3])
    with torch.no_grad():
        before = model(masked, length)
        model.item_embedding.weight[MASK_ID].add_(torch.randn(8, generator=torch.Generator().manual_seed(1)))
        after = model(masked, length)
    assert not torch.allclose(before, after)


def test_padding_after_the_last_item_does_not_change_the_user_vector():
    model = _build()
    item_seq, item_seq_len = _batch()
    noisy = item_seq.masked_fill(torch.arange(SEQ_LEN) >= item_seq_len[:, None], 4)
    with torch.no_grad():
        torch.testing.assert_close(model(noisy, item_seq_len), model(item_seq, item_seq_len))


def test_encoder_is_recbole_sasrec():
    """With SASRec's weights (and the mask row aside) CL4SRec's forward and scores are SASRec's."""
    sasrec_class = get_model("SASRec")
    disable_anomaly_mode()
    model = _build()
    sasrec = sasrec_class(_model_config(), _Catalogue()).eval()
    state = dict(model.state_dict())
    state["item_embedding.weight"] = state["item_embedding.weight"][:N_ITEMS]
    sasrec.load_state_dict(state)
    item_seq, item_seq_len = _batch()
    batch = Interaction({"item_id_list": item_seq, "item_length": item_seq_len})
    with torch.no_grad():
        torch.testing.assert_close(model(item_seq, item_seq_len), sasrec(item_seq, item_seq_len))
        torch.testing.assert_close(model.full_sort_predict(batch), sasrec.full_sort_predict(batch))


# --------------------------------------------------------------------------- loss


def _views():
    view1 = torch.tensor([[2, 3, 0, 0, 0], [6, MASK_ID, 0, 0, 0], [8, 0, 0, 0, 0]])
    view2 = torch.tensor([[1, MASK_ID, 3, MASK_ID, 5], [7, 6, 0, 0, 0], [8, 0, 0, 0, 0]])
    return view1, torch.tensor([2, 2, 1]), view2, torch.tensor([5, 2, 1])


def _training_batch(**extra):
    item_seq, item_seq_len = _batch()
    view1, len1, view2, len2 = _views()
    return Interaction(
        {
            "item_id_list": item_seq,
            "item_length": item_seq_len,
            "item_id": torch.tensor([6, 3, 2]),
            "view1_item_id_list": view1,
            "view1_item_length": len1,
            "view2_item_id_list": view2,
            "view2_item_length": len2,
            **extra,
        }
    )


@pytest.mark.parametrize(("loss_type", "similarity"), [("CE", "dot"), ("CE", "cos"), ("BPR", "dot")])
def test_loss_is_rec_plus_weighted_nt_xent_of_the_views(loss_type, similarity):
    model = _build(loss_type=loss_type, cl_similarity=similarity, cl_weight=0.3, cl_temperature=0.5)
    batch = _training_batch(neg_item_id=torch.tensor([1, 8, 4]))
    snapshot = {key: batch[key].clone() for key in batch.columns}

    rec, cl = model.calculate_loss(batch)

    assert model.loss_names == ("rec", "cl")
    item_seq, item_seq_len = _batch()
    view1, len1, view2, len2 = _views()
    with torch.no_grad():
        user = model(item_seq, item_seq_len)
        table = model.item_embedding.weight
        targets = batch["item_id"]
        if loss_type == "CE":  # softmax over the n_items candidates, never the mask row
            expected_rec = -sum(torch.log_softmax(table[:N_ITEMS] @ user[b], 0)[targets[b]] for b in range(3)) / 3
        else:
            margin = (user * (table[targets] - table[batch["neg_item_id"]])).sum(-1)
            expected_rec = -torch.log(1e-10 + torch.sigmoid(margin)).mean()
        expected_cl = 0.3 * _simclr_nt_xent(model(view1, len1), model(view2, len2), 0.5, similarity)
    torch.testing.assert_close(rec, expected_rec)
    torch.testing.assert_close(cl, expected_cl)
    for key, value in snapshot.items():  # the loss reads the batch, never edits it
        assert torch.equal(batch[key], value)


def test_loss_backpropagates_into_encoder_from_both_terms():
    model = _build(eval_mode=False)
    rec, cl = model.calculate_loss(_training_batch())
    (grad_cl,) = torch.autograd.grad(cl, model.position_embedding.weight, retain_graph=True)
    (grad_rec,) = torch.autograd.grad(rec, model.position_embedding.weight)
    assert grad_cl.abs().sum() > 0 and grad_rec.abs().sum() > 0


def test_cl_weight_zero_is_sasrec_without_views():
    config = _model_config(cl_weight=0.0)
    assert CL4SRec.train_batch_hooks(config, _Catalogue()) == []
    model = _build(cl_weight=0.0)
    item_seq, item_seq_len = _batch()
    targets = torch.tensor([6, 3, 2])
    rec, cl = model.calculate_loss(
        Interaction({"item_id_list": item_seq, "item_length": item_seq_len, "item_id": targets})
    )
    assert cl.item() == 0.0
    with torch.no_grad():
        logits = model(item_seq, item_seq_len) @ model.item_embedding.weight[:N_ITEMS].T
    torch.testing.assert_close(rec, torch.nn.functional.cross_entropy(logits, targets))


def test_train_hook_is_the_shared_contrastive_views_with_the_configured_operation():
    (hook,) = CL4SRec.train_batch_hooks(_model_config(), _Catalogue())
    assert isinstance(hook, ContrastiveViews)
    assert hook.method == "random" and hook.mask_id == MASK_ID
    assert (hook.eta, hook.gamma, hook.beta) == (0.6, 0.3, 0.6)
    (crop_only,) = CL4SRec.train_batch_hooks(_model_config(cl_augmentation="crop"), _Catalogue())
    assert crop_only.method == "crop"


# --------------------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("n_layers", 0, ">= 1"),
        ("n_heads", 3, "divide hidden_size=8"),
        ("hidden_size", 2.5, ">= 1"),
        ("inner_size", True, ">= 1"),
        ("hidden_dropout_prob", 1.0, "in [0, 1)"),
        ("attn_dropout_prob", -0.1, "in [0, 1)"),
        ("hidden_act", "elu", "one of"),
        ("layer_norm_eps", 0.0, "> 0"),
        ("loss_type", "BCE", "one of"),
        ("cl_weight", -0.1, ">= 0"),
        ("cl_weight", math.inf, "a finite number >= 0"),
        ("cl_temperature", 0, "> 0"),
        ("cl_similarity", "l2", "one of"),
        ("cl_history_length", 20, "CL4SRec: 0; its views go through the position table"),
    ],
)
def test_bad_settings_name_key_value_and_range(key, value, accepted):
    with pytest.raises(ConfigValueError) as err:
        _build(**{key: value})
    message = str(err.value)
    assert message.startswith(key) and repr(value) in message and accepted in message


def test_bad_augmentation_settings_are_config_errors():
    with pytest.raises(ConfigValueError, match="cl_augmentation"):
        CL4SRec.train_batch_hooks(_model_config(cl_augmentation="shuffle"), _Catalogue())
    with pytest.raises(ConfigValueError, match="mask_gamma"):
        CL4SRec.train_batch_hooks(_model_config(mask_gamma=1.5), _Catalogue())


def test_yaml_defaults_are_the_duorec_lineage():
    defaults = yaml.safe_load((REPO_ROOT / "properties" / "model" / "CL4SRec.yaml").read_text())
    expected = {
        "n_layers": 2,
        "n_heads": 2,
        "hidden_size": 64,
        "inner_size": 256,
        "hidden_dropout_prob": 0.5,
        "attn_dropout_prob": 0.5,
        "hidden_act": "gelu",
        "initializer_range": 0.02,
        "loss_type": "CE",
        "cl_weight": 0.1,
        "cl_temperature": 1.0,
        "cl_similarity": "dot",
        "cl_augmentation": "random",
        "crop_eta": 0.6,
        "mask_gamma": 0.3,
        "reorder_beta": 0.6,
    }
    assert {key: defaults[key] for key in expected} == expected


# --------------------------------------------------------------------------- end to end


def test_training_loader_feeds_views_to_every_batch_and_leaves_the_dataset_unchanged(tiny_config):
    config, dataset, (train_data, _, _), model = prepare("CL4SRec", "tiny", config_dict=tiny_config())
    assert config["crop_eta"] == 0.6 and config["cl_similarity"] == "dot"
    assert model.n_items == dataset.item_num and model.item_embedding.num_embeddings == dataset.item_num + 1
    stored = train_data._dataset.inter_feat["item_id_list"].clone()
    sizes = []
    for batch in train_data:
        sizes.append(len(batch))
        assert torch.all(batch["view1_item_length"] >= 1) and torch.all(batch["view2_item_length"] >= 1)
        rec, cl = model.calculate_loss(batch)
        assert math.isfinite(rec.item()) and math.isfinite(cl.item()) and cl.item() > 0
    # The last batch is smaller than train_batch_size and needs nothing special.
    assert sizes[-1] < config["train_batch_size"] and sum(sizes) == len(train_data._dataset)
    assert torch.equal(train_data._dataset.inter_feat["item_id_list"], stored)


@pytest.mark.e2e
@pytest.mark.parametrize(("loss_type", "saved"), [("CE", False), ("BPR", True)])
def test_one_epoch_run(tiny_config, loss_type, saved):
    result = run_recbole_cmi("CL4SRec", "tiny", config_dict=tiny_config(loss_type=loss_type), saved=saved)
    assert result["config"]["loss_type"] == loss_type
    sampling = result["config"]["train_neg_sample_args"]["distribution"]
    assert sampling == ("none" if loss_type == "CE" else "uniform")
    assert finite_metrics(result["test_result"]) and "ndcg@20" in result["test_result"]
    assert finite_metrics(result["best_valid_result"])
    if saved:  # the test metrics came from the reloaded best checkpoint
        checkpoint = Path(result["saved_model_file"])
        assert checkpoint.is_file()
        again = evaluate_checkpoint(str(checkpoint), splits="test")
        assert dict(again) == pytest.approx(dict(result["test_result"]))


@pytest.mark.e2e
def test_cli_runs_one_epoch(tiny_config, tmp_path, capsys):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config()))
    main = script_main()

    code = main(
        ["--model=CL4SRec", "--dataset=tiny", f"--config_files={config_file}", "--saved=False", "--cl_similarity=cos"]
    )

    out = capsys.readouterr().out
    assert code == 0
    assert "test result: {" in out and "ndcg@20" in out


def test_cli_reports_a_bad_temperature_in_one_line(tiny_config, tmp_path, capsys):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config()))
    main = script_main()

    code = main(["--model=CL4SRec", "--dataset=tiny", f"--config_files={config_file}", "--cl_temperature=0"])

    assert code == 2
    assert capsys.readouterr().err.strip() == "error: invalid config value cl_temperature=0 (a finite number > 0)"
