"""LazyAdam: torch.optim.Adam on dense gradients and on the rows of a sparse gradient, nothing elsewhere."""

from __future__ import annotations

import pytest
import torch

from recbole_cmi.optim import LazyAdam, has_sparse_gradients


def _pair(weight_decay):
    torch.manual_seed(0)
    start = torch.randn(6, 4)
    dense = torch.nn.Parameter(start.clone())
    lazy = torch.nn.Parameter(start.clone())
    reference = torch.optim.Adam([dense], lr=0.01, weight_decay=weight_decay)
    optimizer = LazyAdam([lazy], lr=0.01, weight_decay=weight_decay)
    return dense, reference, lazy, optimizer


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_dense_gradients_get_torch_adams_update(weight_decay):
    dense, reference, lazy, optimizer = _pair(weight_decay)
    for step in range(4):
        grad = torch.randn(6, 4, generator=torch.Generator().manual_seed(step))
        dense.grad, lazy.grad = grad.clone(), grad.clone()
        reference.step()
        optimizer.step()
        assert torch.allclose(lazy, dense, atol=1e-7)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_a_sparse_gradient_over_every_row_is_adam(weight_decay):
    dense, reference, lazy, optimizer = _pair(weight_decay)
    rows = torch.tensor([[0, 1, 2, 3, 4, 5]])
    for step in range(4):
        values = torch.randn(6, 4, generator=torch.Generator().manual_seed(step))
        dense.grad = values.clone()
        lazy.grad = torch.sparse_coo_tensor(rows, values.clone(), (6, 4), check_invariants=True)
        reference.step()
        optimizer.step()
        assert torch.allclose(lazy, dense, atol=1e-6)


def test_sparse_steps_move_only_their_rows_and_match_hand_computed_adam():
    weight = torch.nn.Parameter(torch.ones(4, 2))
    optimizer = LazyAdam([weight], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.5)
    # Row 2 appears twice: a sparse gradient sums duplicates (what nn.Embedding(sparse=True) produces).
    weight.grad = torch.sparse_coo_tensor(
        torch.tensor([[2, 2, 0]]), torch.tensor([[1.0, 1.0], [1.0, 1.0], [2.0, 0.0]]), (4, 2)
    )
    optimizer.step()
    # Step 1 of Adam: m̂ = g, v̂ = g², so each coordinate with g != 0 moves by lr·sign(g) (up to eps).
    # g = grad + 0.5·w: row 2 -> (2.5, 2.5), row 0 -> (2.5, 0.5); rows 1 and 3 are untouched.
    expected = torch.tensor([[0.9, 0.9], [1.0, 1.0], [0.9, 0.9], [1.0, 1.0]])
    assert torch.allclose(weight.detach(), expected, atol=1e-6)
    state = optimizer.state[weight]
    assert state["exp_avg"][1].abs().sum() == 0 and state["exp_avg"][3].abs().sum() == 0
    assert torch.allclose(state["exp_avg"][2], torch.tensor([0.25, 0.25]))
    # A second step over row 1 only: row 1 moves, the others keep weights and moments.
    before = weight.detach().clone()
    moments = state["exp_avg"].clone()
    weight.grad = torch.sparse_coo_tensor(torch.tensor([[1]]), torch.tensor([[1.0, -1.0]]), (4, 2))
    optimizer.step()
    changed = (weight.detach() != before).any(dim=1)
    assert changed.tolist() == [False, True, False, False]
    assert torch.equal(state["exp_avg"][[0, 2, 3]], moments[[0, 2, 3]])


def test_optimizer_state_round_trips_through_state_dict():
    weight = torch.nn.Parameter(torch.randn(5, 3))
    optimizer = LazyAdam([weight], lr=0.01, weight_decay=1e-4)
    weight.grad = torch.sparse_coo_tensor(torch.tensor([[1, 3]]), torch.ones(2, 3), (5, 3))
    optimizer.step()
    restored = LazyAdam([weight], lr=0.01, weight_decay=1e-4)
    restored.load_state_dict(optimizer.state_dict())
    assert torch.equal(restored.state[weight]["exp_avg_sq"], optimizer.state[weight]["exp_avg_sq"])
    assert float(restored.state[weight]["step"]) == 1


def test_sparse_embeddings_are_detected():
    assert has_sparse_gradients(torch.nn.Embedding(3, 2, sparse=True))
    assert not has_sparse_gradients(torch.nn.Sequential(torch.nn.Embedding(3, 2), torch.nn.Linear(2, 2)))


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="lr"):
        LazyAdam([torch.nn.Parameter(torch.zeros(1))], lr=-1.0)
