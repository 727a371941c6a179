r"""ST-Adam: Adam whose momentum shrinks when the gradient oscillates.

**This is a reconstruction.** The VisualMixer paper names ST-Adam as an optimizer that
"dynamically adjusts update momentum based on the current gradient and historical gradients"
to damp the gradient oscillation that shuffled inputs cause, but its update rule is not
public and the authors' code trains with plain SGD or Adam. We implement the candidate from
the project's reference notes (``visualmixer-paper.md`` section 4), per parameter tensor:

.. math::

    \rho_t &= \cos(g_t, m_{t-1}) \quad (\rho_1 = 1) \\
    \beta_{1,t} &= \beta_{\min} + (\beta_{\max} - \beta_{\min})\,\tfrac{1 + \rho_t}{2} \\
    m_t &= \beta_{1,t}\, m_{t-1} + (1 - \beta_{1,t})\, g_t \\
    v_t &= \beta_2\, v_{t-1} + (1 - \beta_2)\, g_t^2 \\
    \hat m_t &= m_t \big/ \bigl(1 - \textstyle\prod_{\tau \le t} \beta_{1,\tau}\bigr), \qquad
    \hat v_t = v_t / (1 - \beta_2^t) \\
    \theta_t &= \theta_{t-1} - \alpha\, \hat m_t / (\sqrt{\hat v_t} + \epsilon)

When the new gradient agrees with the running momentum (:math:`\rho \to 1`) momentum stays
high (:math:`\beta_{\max}`, faster); when it points the other way (oscillation,
:math:`\rho \to -1`) momentum drops to :math:`\beta_{\min}`, so the stale direction is
forgotten quickly. With :math:`\beta_{\min} = \beta_{\max} = \beta_1` this is exactly Adam
(``torch.optim.Adam``), which the tests check. Weight decay is decoupled (AdamW style) when
``decoupled_weight_decay=True``, otherwise added to the gradient as in ``torch.optim.Adam``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class STAdam(torch.optim.Optimizer):
    """Adam with a per-tensor momentum coefficient set by gradient/momentum agreement."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        momentum_bounds: tuple[float, float] = (0.5, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
    ) -> None:
        if not lr > 0.0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"betas[1] must be in [0, 1), got {betas[1]}")
        low, high = momentum_bounds
        if not 0.0 <= low <= high < 1.0:
            raise ValueError(
                f"momentum_bounds must satisfy 0 <= low <= high < 1, got {momentum_bounds}"
            )
        if not eps > 0.0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(
            lr=lr,
            betas=betas,
            momentum_bounds=momentum_bounds,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            low, high = group["momentum_bounds"]
            beta2 = group["betas"][1]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if grad.is_sparse:
                    raise RuntimeError("STAdam does not support sparse gradients")
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                    # prod of beta1_t so far, for the bias correction of a varying beta1.
                    state["beta1_product"] = torch.ones((), device=param.device)
                if group["weight_decay"]:
                    if group["decoupled_weight_decay"]:
                        param.mul_(1 - group["lr"] * group["weight_decay"])
                    else:
                        grad = grad.add(param, alpha=group["weight_decay"])
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                if state["step"] == 1:
                    agreement = torch.ones((), device=param.device)
                else:
                    agreement = torch.nn.functional.cosine_similarity(
                        grad.reshape(1, -1), exp_avg.reshape(1, -1), eps=1e-12
                    )[0]
                beta1 = low + (high - low) * (1 + agreement) / 2
                state["beta1_product"].mul_(beta1)
                exp_avg.mul_(beta1).add_((1 - beta1) * grad)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias1 = 1 - state["beta1_product"]
                bias2 = 1 - beta2 ** state["step"]
                denom = (exp_avg_sq / bias2).sqrt_().add_(group["eps"])
                param.addcdiv_(exp_avg / bias1, denom, value=-group["lr"])
        return loss
