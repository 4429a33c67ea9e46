"""CMI: the maths of every term against hand or brute-force values, and end-to-end runs."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_SETTINGS, script_main
from recbole.data.interaction import Interaction

from recbole_cmi.data.sampler import SHARED_NEG_FIELD, SharedNegatives, uniform_negatives
from recbole_cmi.errors import ConfigValueError
from recbole_cmi.model.cmi import orthogonality_loss, uniformity_loss
from recbole_cmi.model.layers import info_nce
from recbole_cmi.pipeline import prepare
from recbole_cmi.quick_start import run_recbole_cmi
from recbole_cmi.trainer import get_trainer


@pytest.fixture(scope="module")
def built(tiny_data_root, tmp_path_factory):
    """(config, train loader, model) for CMI on the tiny dataset, m = 3, d = 8."""
    workdir = tmp_path_factory.mktemp("cmi")
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        settings = dict(TINY_SETTINGS, data_path=str(tiny_data_root), checkpoint_dir=str(workdir / "saved"))
        settings.update(num_interest=3, embedding_size=8)
        config, _, (train, _, _), model = prepare("CMI", "tiny", config_dict=settings)
    finally:
        os.chdir(cwd)
    return config, train, model


def _history():
    return torch.tensor([[3, 5, 7, 0, 0], [2, 0, 0, 0, 0], [9, 4, 6, 8, 10]]), torch.tensor([3, 1, 5])


def test_assignment_rows_sum_to_one_and_padding_is_zero(built):
    _, _, model = built
    seq, _ = _history()
    p = model.assignment(seq)
    valid = seq > 0
    assert torch.allclose(p[valid].sum(-1), torch.ones(int(valid.sum())), atol=1e-6)
    assert torch.all(p[~valid] == 0)
    cos = F.normalize(model.item_embedding(seq[0, :1]), dim=-1) @ F.normalize(model.category_embedding.weight, dim=-1).T
    assert torch.allclose(p[0, 0], torch.softmax(cos[0] / model.assign_temperature, -1), atol=1e-6)


def test_interests_match_brute_force_and_have_unit_norm(built):
    _, _, model = built
    seq, lengths = _history()
    final, p = model.encode(seq, lengths)
    assert torch.allclose(final.norm(dim=-1), torch.ones(3, 3), atol=1e-5)
    g = F.normalize(model.category_embedding.weight, dim=-1)
    for b in range(3):
        v = F.normalize(model.item_embedding(seq[b, : lengths[b]]), dim=-1)
        probs = torch.softmax(v @ g.T / model.assign_temperature, dim=-1)
        interests = F.normalize(probs.T @ v, dim=-1)  # u^l = normalise(Σ_k p_k^l v_k)
        states, _ = model.gru(v.unsqueeze(0))  # the authors' unpacked GRU, output at len - 1
        general = F.normalize(model.general_mlp(states[0, -1]), dim=-1)
        expected = F.normalize(interests + general, dim=-1)
        assert torch.allclose(final[b], expected, atol=1e-5)


def test_without_general_interest_the_interests_are_the_category_sums(built):
    _, _, model = built
    seq, lengths = _history()
    model.use_general_interest = False
    try:
        final, p = model.encode(seq, lengths)
    finally:
        model.use_general_interest = True
    v = F.normalize(model.item_embedding(seq[:, : p.shape[1]]), dim=-1)
    assert torch.allclose(final, F.normalize(torch.einsum("blm,bld->bmd", p, v), dim=-1), atol=1e-6)


def test_orthogonality_loss():
    assert orthogonality_loss(torch.eye(4)).item() == 0.0
    g = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=-1)
    # G Gᵀ − I has off-diagonal entries cos 45° = 1/√2: (2 · 1/2) / m² = 1/4
    assert orthogonality_loss(g).item() == pytest.approx(0.25)


def test_uniformity_loss():
    even = torch.full((2, 3, 4), 0.25)
    assert uniformity_loss(even, torch.ones(2, 3, dtype=torch.bool)).item() == pytest.approx(0.0, abs=1e-7)
    p = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])  # [0, 1] is padding
    valid = torch.tensor([[True, False], [True, True]])
    usage = torch.tensor([2.0 / 3, 1.0 / 3])  # mean of the three valid rows
    expected = usage.std() / usage.mean()  # unbiased std, as torch.std in the authors' code
    assert uniformity_loss(p, valid).item() == pytest.approx(expected.item())


def _batch(config, seq, lengths, targets, negatives=None, views=None):
    data = {
        config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]: seq,
        config["ITEM_LIST_LENGTH_FIELD"]: lengths,
        config["ITEM_ID_FIELD"]: targets,
    }
    if negatives is not None:
        data[SHARED_NEG_FIELD] = negatives
    if views is not None:
        for prefix, (view_seq, view_len) in zip(("view1_", "view2_"), views):
            data[prefix + config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]] = view_seq
            data[prefix + config["ITEM_LIST_LENGTH_FIELD"]] = view_len
    return Interaction(data)


def test_loss_terms_equal_brute_force(built):
    """A batch of 2 (smaller than train_batch_size): every term recomputed with explicit loops."""
    config, _, model = built
    view1 = (torch.tensor([[3, 7, 0], [2, 0, 0]]), torch.tensor([2, 1]))
    view2 = (torch.tensor([[5, 0, 0], [9, 4, 0]]), torch.tensor([1, 2]))
    targets, negatives = torch.tensor([11, 12]), torch.tensor([13, 14])
    batch = _batch(
        config, torch.zeros(2, 3, dtype=torch.long), torch.tensor([3, 3]), targets, negatives, [view1, view2]
    )
    rec, cl, orth, uni = model.calculate_loss(batch)

    interests = [model.forward(*view1), model.forward(*view2)]  # [B, m, d] per view
    items = F.normalize(model.item_embedding.weight, dim=-1)

    def score(u, item):  # max over interests of the cosine
        return max(float((u[k] @ items[item]).detach()) for k in range(u.shape[0]))

    rec_terms = []
    for u in interests:
        for b in range(2):
            candidates = [score(u[b], targets[b])] + [score(u[b], n) for n in negatives.tolist() * 2]
            logits = torch.tensor(candidates) / model.temperature
            rec_terms.append(-torch.log_softmax(logits, 0)[0])
    assert rec.item() == pytest.approx(torch.stack(rec_terms).mean().item(), rel=1e-5)

    a, b = interests[0].reshape(-1, 8), interests[1].reshape(-1, 8)
    n = a.shape[0]
    total = 0.0
    for i in range(n):  # anchor (user, interest) in view 1: positive = same pair in view 2
        row = torch.tensor([float(a[i] @ b[j]) for j in range(n)]) / model.cl_temperature
        col = torch.tensor([float(b[i] @ a[j]) for j in range(n)]) / model.cl_temperature
        total += float(-torch.log_softmax(row, 0)[i] - torch.log_softmax(col, 0)[i])
    assert cl.item() == pytest.approx(model.cl_weight * total / n, rel=1e-5)

    g = F.normalize(model.category_embedding.weight, dim=-1)
    assert orth.item() == pytest.approx(model.orth_weight * orthogonality_loss(g).item(), rel=1e-5)
    assert uni.item() > 0


def test_fused_info_nce_value_and_gradients_match_autograd():
    """The one-exponential InfoNCE used for cosine logits = autograd through log-softmax, value and grads."""
    generator = torch.Generator().manual_seed(0)
    raw_a = torch.randn(7, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    raw_b = torch.randn(7, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    temperature = 0.1

    fused = info_nce(raw_a, raw_b, temperature, "cos")
    fused_grads = torch.autograd.grad(fused, (raw_a, raw_b))

    a, b = F.normalize(raw_a, dim=-1), F.normalize(raw_b, dim=-1)
    logits = a @ b.T / temperature
    positives = torch.arange(7)
    reference = F.cross_entropy(logits, positives) + F.cross_entropy(logits.T, positives)
    reference_grads = torch.autograd.grad(reference, (raw_a, raw_b))

    assert fused.item() == pytest.approx(reference.item(), rel=1e-12)
    for got, want in zip(fused_grads, reference_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert info_nce(raw_a, raw_b, temperature, "cos", combine="mean").item() == pytest.approx(fused.item() / 2)
    # Too small a temperature for unshifted exponentials: the log-sum-exp path gives the same loss.
    sharp = info_nce(raw_a, raw_b, 0.02, "cos")
    sharp_logits = a @ b.T / 0.02
    want = F.cross_entropy(sharp_logits, positives) + F.cross_entropy(sharp_logits.T, positives)
    assert sharp.item() == pytest.approx(want.item(), rel=1e-10)


def _masked_info_nce_loop(a, b, temperature, exclude):
    """Both directions of the cross-view InfoNCE, one anchor at a time, excluded pairs left out of the sum."""
    n, total = a.shape[0], 0.0
    for i in range(n):
        for anchor, other in ((a, b), (b, a)):
            kept = [j for j in range(n) if not exclude[i, j]]
            logits = torch.stack([anchor[i] @ other[j] for j in kept]) / temperature
            total = total - torch.log_softmax(logits, 0)[kept.index(i)]
    return total / n


@pytest.mark.parametrize(("similarity", "temperature"), [("cos", 0.1), ("cos", 0.02), ("dot", 0.5)])
def test_info_nce_leaves_excluded_pairs_out_of_the_negatives(similarity, temperature):
    """Fused (cos, τ 0.1) and log-sum-exp paths against an explicit loop, values and gradients."""
    generator = torch.Generator().manual_seed(1)
    raw_a = torch.randn(6, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    raw_b = torch.randn(6, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    users = torch.tensor([0, 1, 0, 2, 1, 0])
    exclude = (users[:, None] == users[None, :]) & ~torch.eye(6, dtype=torch.bool)

    got = info_nce(raw_a, raw_b, temperature, similarity, exclude=exclude)
    got_grads = torch.autograd.grad(got, (raw_a, raw_b))
    a, b = (F.normalize(raw_a, dim=-1), F.normalize(raw_b, dim=-1)) if similarity == "cos" else (raw_a, raw_b)
    want = _masked_info_nce_loop(a, b, temperature, exclude)
    want_grads = torch.autograd.grad(want, (raw_a, raw_b))

    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-10)
    # Nothing excluded (an all-False mask) is the unmasked loss.
    plain = info_nce(raw_a, raw_b, temperature, similarity)
    assert info_nce(raw_a, raw_b, temperature, similarity, exclude=torch.zeros(6, 6, dtype=torch.bool)) == plain
    assert got.item() < plain.item()  # fewer negatives, smaller loss


def test_same_user_pairs_mask_other_histories_of_the_user_and_keep_its_own_interests(built):
    config, _, model = built
    m = model.num_interest
    users = torch.tensor([4, 9, 4, 7, 9])
    mask = model._same_user_pairs(Interaction({config["USER_ID_FIELD"]: users}))
    assert mask.shape == (5 * m, 5 * m)
    for i in range(5 * m):
        for j in range(5 * m):
            b_i, b_j = divmod(i, m)[0], divmod(j, m)[0]
            assert bool(mask[i, j]) == (users[b_i] == users[b_j] and b_i != b_j)
    assert model._same_user_pairs(Interaction({config["USER_ID_FIELD"]: torch.tensor([1, 2, 3])})) is None


def test_cl_mask_same_user_changes_the_loss_only_when_a_user_repeats(built):
    config, _, model = built
    view1 = (torch.tensor([[3, 7, 0], [2, 0, 0], [5, 6, 0]]), torch.tensor([2, 1, 2]))
    view2 = (torch.tensor([[5, 0, 0], [9, 4, 0], [7, 0, 0]]), torch.tensor([1, 2, 1]))
    seq, lengths = torch.zeros(3, 3, dtype=torch.long), torch.tensor([3, 3, 3])
    targets, negatives = torch.tensor([11, 12, 13]), torch.tensor([14, 15, 16])

    def cl_loss(users, masked):
        batch = _batch(config, seq, lengths, targets, negatives, [view1, view2])
        batch.update(Interaction({config["USER_ID_FIELD"]: users}))
        model.cl_mask_same_user = masked
        try:
            return model.calculate_loss(batch)[1].item()
        finally:
            model.cl_mask_same_user = True

    distinct, repeated = torch.tensor([1, 2, 3]), torch.tensor([1, 2, 1])
    assert cl_loss(distinct, True) == pytest.approx(cl_loss(distinct, False), rel=1e-6)
    assert cl_loss(repeated, True) < cl_loss(repeated, False)


def test_sphere_projection_keeps_rows_on_the_unit_sphere(built):
    config, _, model = built
    with torch.no_grad():
        model.item_embedding.weight[1:].mul_(3.0)
    seq, lengths = _history()
    model.calculate_loss(
        _batch(config, seq, lengths, torch.tensor([11, 12, 13]), torch.tensor([14, 15, 16]), [(seq, lengths)] * 2)
    )
    norms = model.item_embedding.weight[1:].norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert model.item_embedding.weight[0].abs().sum() == 0


def test_full_sort_predict_is_max_over_interests_and_merges_per_interest_top_n(built):
    config, _, model = built
    seq, lengths = _history()
    batch = _batch(config, seq, lengths, torch.zeros(3, dtype=torch.long))
    scores = model.full_sort_predict(batch)
    assert scores.shape == (3, model.n_items)
    interests = model.forward(seq, lengths)
    items = F.normalize(model.item_embedding.weight[: model.n_items], dim=-1)
    brute = torch.stack(
        [torch.stack([max(u[k] @ items[j] for k in range(3)) for j in range(model.n_items)]) for u in interests]
    )
    assert torch.allclose(scores, brute, atol=1e-6)
    model.score_chunk_size = 7
    assert torch.allclose(model.full_sort_predict(batch), scores, atol=1e-6)
    model.score_chunk_size = 100000
    top_n = 5
    for b in range(3):  # the authors' retrieval: top-N per interest, pooled, sorted, deduplicated
        pooled = {}
        for k in range(3):
            values, ids = (interests[b, k] @ items.T).topk(top_n)
            for value, item in zip(values.tolist(), ids.tolist()):
                pooled[item] = max(pooled.get(item, -math.inf), value)
        merged = [item for item, _ in sorted(pooled.items(), key=lambda kv: -kv[1])][:top_n]
        assert merged == scores[b].topk(top_n).indices.tolist()
    pair = model.predict(_batch(config, seq, lengths, torch.tensor([4, 5, 6])))
    assert torch.allclose(pair, scores[torch.arange(3), torch.tensor([4, 5, 6])], atol=1e-6)


def test_uniform_negatives_avoid_history_and_target():
    history = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]]).repeat(200, 1)
    targets = torch.tensor([4, 1]).repeat(200)
    negatives = uniform_negatives(history, targets, n_items=8, generator=torch.Generator().manual_seed(0))
    assert ((negatives >= 1) & (negatives < 8)).all()
    assert not (history == negatives[:, None]).any()
    assert not (negatives == targets).any()


def test_interest_aware_negatives_come_from_the_dominant_category_and_avoid_history(built):
    config, train, model = built
    config["neg_sampler"], config["hard_negative_ratio"], config["hard_negative_pool"] = "interest_aware", 1.0, 4
    try:
        sampler = SharedNegatives(config, train._dataset)
    finally:
        config["neg_sampler"], config["hard_negative_ratio"] = "uniform", 0.5
    sampler.bind_model(model)
    sampler.generator = torch.Generator().manual_seed(0)
    seq, lengths = _history()
    batch = _batch(config, seq.repeat(30, 1), lengths.repeat(30), torch.tensor([11, 12, 13]).repeat(30))
    negatives = sampler(batch)[SHARED_NEG_FIELD]
    assert not (batch[config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]] == negatives[:, None]).any()
    assert not (negatives == batch[config["ITEM_ID_FIELD"]]).any()
    pools = model.category_item_pools(4)
    dominant = model.dominant_category(seq, lengths).repeat(30)
    from_pool = torch.tensor([int(n) in pools[c].tolist() for n, c in zip(negatives, dominant)])
    assert from_pool.float().mean() > 0.5  # the rest fell back to uniform after a collision


@pytest.mark.parametrize(
    "key,value",
    [
        ("num_interest", 0),
        ("assign_temperature", 0.0),
        ("cl_temperature", -1.0),
        ("cl_weight", -0.1),
        ("loss_type", "XE"),
        ("category_init", "zeros"),
        ("neg_sampler", "hard"),
        ("cl_augmentation", "flip"),
        ("rec_loss_input", "both"),
        ("cl_history_length", -1),
        ("cl_history_length", 4),
    ],
)
def test_invalid_settings_are_rejected(tiny_config, key, value):
    with pytest.raises(ConfigValueError, match=key):
        prepare("CMI", "tiny", config_dict=tiny_config(**{key: value}))


@pytest.mark.e2e
def test_training_is_deterministic_under_a_seed(tiny_config):
    settings = tiny_config(num_interest=2, embedding_size=8, epochs=2)
    first = run_recbole_cmi("CMI", "tiny", config_dict=settings, saved=False)
    second = run_recbole_cmi("CMI", "tiny", config_dict=settings, saved=False)
    assert first["best_valid_result"] == second["best_valid_result"]
    assert first["test_result"] == second["test_result"]


@pytest.mark.e2e
@pytest.mark.parametrize("loss_type", ["SAMPLED", "CE", "BPR"])
def test_cli_trains_and_tests_cmi(tiny_data_root, tmp_path, capsys, loss_type):
    main = script_main()
    code = main(
        [
            "--model=CMI",
            "--dataset=tiny",
            f"--data_path={tiny_data_root}",
            f"--loss_type={loss_type}",
            "--num_interest=2",
            "--embedding_size=8",
            "--epochs=1",
            "--train_batch_size=64",
            "--MAX_ITEM_LIST_LENGTH=10",
            "--state=ERROR",
            "--gpu_id=",
            "--user_inter_num_interval=[3,inf)",
            f"--checkpoint_dir={tmp_path / 'saved'}",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "test result" in out and "recall@10" in out


def _sparse_and_dense(tiny_data_root, tmp_path, **overrides):
    models = []
    for sparse in (False, True):
        settings = dict(TINY_SETTINGS, data_path=str(tiny_data_root), checkpoint_dir=str(tmp_path / "saved"))
        settings.update(num_interest=3, embedding_size=8, sparse_item_updates=sparse, **overrides)
        config, _, _, model = prepare("CMI", "tiny", config_dict=settings)
        models.append(model)
    models[1].load_state_dict(models[0].state_dict())
    return config, models


def test_sparse_item_updates_give_the_dense_loss_and_gradient_rows(tiny_data_root, tmp_path):
    config, (dense, sparse) = _sparse_and_dense(tiny_data_root, tmp_path)
    with torch.no_grad():  # off the sphere, so the per-row projection has work to do
        for model in (dense, sparse):
            model.item_embedding.weight[1:].mul_(2.0)
    seq, lengths = _history()
    batch = _batch(config, seq, lengths, torch.tensor([11, 12, 13]), torch.tensor([14, 15, 16]), [(seq, lengths)] * 2)
    norms_before = sparse.item_embedding.weight.detach().norm(dim=-1)
    losses = [sum(model.calculate_loss(batch)) for model in (dense, sparse)]
    assert losses[1].item() == pytest.approx(losses[0].item(), rel=1e-6)
    for loss in losses:
        loss.backward()
    sparse_grad = sparse.item_embedding.weight.grad
    assert sparse_grad.is_sparse
    read = torch.cat([seq.flatten(), torch.arange(11, 17)]).unique()
    read = read[read > 0]
    assert torch.allclose(sparse_grad.to_dense()[read], dense.item_embedding.weight.grad[read], atol=1e-6)
    # Only the rows the step read were projected; the others keep their norm.
    norms = sparse.item_embedding.weight.detach().norm(dim=-1)
    assert torch.allclose(norms[read], torch.ones(len(read)), atol=1e-5)
    unread = torch.ones(len(norms), dtype=torch.bool)
    unread[read] = False
    unread[0] = False
    assert torch.equal(norms[unread], norms_before[unread])
    assert not torch.allclose(norms[unread], torch.ones(int(unread.sum())), atol=1e-3)


def test_sparse_item_updates_train_with_lazy_adam_and_leave_unread_rows(tiny_config):
    from recbole_cmi.optim import LazyAdam
    from recbole_cmi.trainer import get_trainer

    config, _, (train, _, _), model = prepare(
        "CMI", "tiny", config_dict=tiny_config(num_interest=2, embedding_size=8, sparse_item_updates=True)
    )
    trainer = get_trainer(config["MODEL_TYPE"], "CMI")(config, model)
    assert isinstance(trainer.optimizer, LazyAdam)
    batch = next(iter(train))
    before = model.item_embedding.weight.detach().clone()
    trainer.optimizer.zero_grad()
    sum(model.calculate_loss(batch)).backward()
    trainer.optimizer.step()
    read = model._items_read(batch, batch[model.ITEM_SEQ]).unique()
    moved = (model.item_embedding.weight.detach() != before).any(dim=1).nonzero().flatten()
    assert set(moved.tolist()) <= set(read.tolist())
    assert len(moved) > 0


@pytest.mark.parametrize(
    "overrides, message",
    [({"loss_type": "CE"}, "sparse_item_updates"), ({"learner": "sgd"}, "learner")],
)
def test_sparse_item_updates_refuse_dense_settings(tiny_config, overrides, message):
    with pytest.raises(ConfigValueError, match=message):
        run_recbole_cmi("CMI", "tiny", config_dict=tiny_config(sparse_item_updates=True, **overrides), saved=False)


@pytest.mark.e2e
def test_sparse_item_updates_train_end_to_end(tiny_config):
    result = run_recbole_cmi(
        "CMI", "tiny", config_dict=tiny_config(num_interest=2, embedding_size=8, sparse_item_updates=True), saved=False
    )
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


def test_rec_loss_on_the_history_scores_the_whole_history_and_keeps_the_views_for_cl(built):
    config, _, model = built
    view1 = (torch.tensor([[3, 7, 0], [2, 0, 0]]), torch.tensor([2, 1]))
    view2 = (torch.tensor([[5, 0, 0], [9, 4, 0]]), torch.tensor([1, 2]))
    history = (torch.tensor([[3, 5, 7, 0], [2, 9, 4, 0]]), torch.tensor([3, 3]))
    targets, negatives = torch.tensor([11, 12]), torch.tensor([13, 14])
    batch = _batch(config, *history, targets, negatives, [view1, view2])
    as_run = model.calculate_loss(batch)
    model.rec_loss_input = "history"
    try:
        rec, cl, orth, _ = model.calculate_loss(batch)
    finally:
        model.rec_loss_input = "views"

    interests = model.forward(*history)
    items = F.normalize(model.item_embedding.weight, dim=-1)
    terms = []
    for b in range(2):  # candidates: the row's target and each row's negative once
        candidates = [interests[b] @ items[targets[b]]] + [interests[b] @ items[n] for n in negatives]
        logits = torch.stack([c.max() for c in candidates]) / model.temperature
        terms.append(-torch.log_softmax(logits, 0)[0])
    assert rec.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    assert rec.item() != pytest.approx(as_run[0].item(), rel=1e-3)
    assert cl.item() == pytest.approx(as_run[1].item(), rel=1e-6)  # InfoNCE: the same two views
    assert orth.item() == pytest.approx(as_run[2].item(), rel=1e-6)


@pytest.mark.e2e
def test_rec_loss_on_the_history_trains_end_to_end(tiny_config):
    settings = tiny_config(num_interest=2, embedding_size=8, rec_loss_input="history")
    result = run_recbole_cmi("CMI", "tiny", config_dict=settings, saved=False)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


def test_training_on_views_longer_than_the_model_input_has_a_finite_loss(tiny_config):
    """cl_history_length: the views split up to 16 items of history while the model reads 4."""
    settings = tiny_config(num_interest=2, embedding_size=8, MAX_ITEM_LIST_LENGTH=4, cl_history_length=16)
    config, _, (train, _, _), model = prepare("CMI", "tiny", config_dict=settings)
    batch = next(iter(train))
    assert batch["item_length"].max() <= 4 and batch["view1_item_id_list"].shape[1] == 16
    assert batch["view2_item_length"].max() > 4  # a view wider than the model input reaches the encoder
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    losses = trainer._train_epoch(train, 0)
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses) and losses[1] > 0
