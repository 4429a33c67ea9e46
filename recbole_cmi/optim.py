"""Adam whose sparse-gradient parameters are updated lazily (only the rows in the batch).

With ``sparse_item_updates: True`` CMI's item table gets a sparse gradient (the rows of the batch's
history, target and negative items). Dense Adam would still move every row each step (momentum and
weight decay), so a step costs O(items × d); :class:`LazyAdam` updates, for a sparse gradient, only
the rows it names — their moments and their weights, with the coupled L2 weight decay of
``torch.optim.Adam`` applied to those rows — so a step costs O(batch × d). Rows outside the batch
keep their weights and moments until they appear again (as ``torch.optim.SparseAdam``, which has no
weight decay). Dense gradients get exactly ``torch.optim.Adam``'s update.
"""

from __future__ import annotations

import torch

__all__ = ["LazyAdam", "has_sparse_gradients"]


def has_sparse_gradients(model: torch.nn.Module) -> bool:
    """True when one of ``model``'s embeddings produces sparse gradients (``nn.Embedding(sparse=True)``)."""
    return any(isinstance(module, torch.nn.Embedding) and module.sparse for module in model.modules())


class LazyAdam(torch.optim.Optimizer):
    """``torch.optim.Adam`` (coupled L2 ``weight_decay``) that updates a sparse gradient's rows only."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(
                f"invalid LazyAdam settings: lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}"
            )
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                step = float(state["step"])
                step_size = group["lr"] / (1 - beta1**step)
                bias_correction2_sqrt = (1 - beta2**step) ** 0.5
                grad = param.grad
                if grad.is_sparse:
                    grad = grad.coalesce()
                    rows, values = grad.indices()[0], grad.values()
                    if group["weight_decay"]:
                        values = values + group["weight_decay"] * param[rows]
                    exp_avg = state["exp_avg"][rows].mul_(beta1).add_(values, alpha=1 - beta1)
                    exp_avg_sq = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(values, values, value=1 - beta2)
                    state["exp_avg"][rows] = exp_avg
                    state["exp_avg_sq"][rows] = exp_avg_sq
                    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(group["eps"])
                    param[rows] = param[rows].addcdiv_(exp_avg, denom, value=-step_size)
                else:
                    if group["weight_decay"]:
                        grad = grad.add(param, alpha=group["weight_decay"])
                    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                    exp_avg.lerp_(grad, 1 - beta1)
                    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(group["eps"])
                    param.addcdiv_(exp_avg, denom, value=-step_size)
        return loss
