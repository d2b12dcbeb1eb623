"""The minGRU backbone: a gated recurrence whose parameters are all ``nn.Linear`` layers applied to
the whole ``(batch, time, d)`` tensor at once, so DP-SGD's per-sample gradients cost what they cost
for the Transformer (Opacus' Linear grad sampler, one einsum per layer), not DPLSTM's per-step ones.

minGRU (Feng et al. 2024, "Were RNNs All We Needed?"): the gate and the candidate depend only on
the current input, ``z_t = sigmoid(W_z x_t)``, ``c_t = W_h x_t``, and the state is
``h_t = (1 - z_t) * h_{t-1} + z_t * c_t`` from ``h_0 = 0``. The recurrence itself has no
parameters: a linear scan (``linear_scan``) with its own backward, one fused op per time step.
Depth gives the nonlinearity across time: pre-norm blocks of minGRU + projection and an MLP,
each with a residual, as a Transformer block has.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from seqanom_core.config import ModelConfig
from seqanom_core.models.network import NextEventModel
from seqanom_core.models.registry import register_backbone


class _LinearScan(torch.autograd.Function):
    """``h_t = a_t * h_{t-1} + b_t`` from ``h_0 = 0`` over dim 1, one fused op per time step;
    the backward is the same scan run backwards (``dh_t = dL/dh_t + a_{t+1} dh_{t+1}``)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # stays in (batch, time, d): a transposed copy costs more than the whole loop
        h = torch.empty_like(b)
        h[:, 0] = b[:, 0]
        for t in range(1, h.shape[1]):
            h[:, t] = torch.addcmul(b[:, t], a[:, t], h[:, t - 1])
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, h = ctx.saved_tensors
        dh = torch.empty_like(h)
        dh[:, -1] = grad[:, -1]
        for t in range(dh.shape[1] - 2, -1, -1):
            dh[:, t] = torch.addcmul(grad[:, t], a[:, t + 1], dh[:, t + 1])
        da = torch.zeros_like(dh)
        da[:, 1:] = dh[:, 1:] * h[:, :-1]  # h_0 = 0: a at t = 0 gets no gradient
        return da, dh


def linear_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``h`` ``(batch, time, d)`` with ``h_t = a_t * h_{t-1} + b_t``, ``h_0 = 0``, from ``a``,
    ``b`` ``(batch, time, d)``; position t depends only on positions <= t. Exact (a sequential
    loop of one ``addcmul`` per step, forward and backward), unlike a log-space parallel scan,
    and on CPU faster than one (``logcumsumexp``'s backward dominates it at these sizes)."""
    return _LinearScan.apply(a, b)


def min_gru(gate: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """minGRU states ``(batch, time, d)``: ``h_t = (1 - z_t) h_{t-1} + z_t c_t``, ``h_0 = 0``,
    ``z = sigmoid(gate)``, from gate logits and candidates ``c``, both ``(batch, time, d)``."""
    z = torch.sigmoid(gate)
    return linear_scan(1 - z, z * candidate)


class MinGRUBlock(nn.Module):
    """Pre-norm block: ``x + proj(minGRU(ln1(x)))``, then ``x + fc2(gelu(fc1(ln2(x))))``."""

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.gates = nn.Linear(d_model, 2 * d_model)  # gate logits and candidates
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.fc2 = nn.Linear(4 * d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, time, d)`` -> ``(batch, time, d)``; position t sees only <= t."""
        gate, candidate = self.gates(self.ln1(x)).chunk(2, dim=-1)
        x = x + self.drop(self.proj(min_gru(gate, candidate)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


@register_backbone("mingru")
class MinGRUNextEventModel(NextEventModel):
    """Next-event network on stacked minGRU blocks (all parameters in ``nn.Linear``/LayerNorm)."""

    title = "minGRU"
    detector_name = "MinGRUDetector"

    @classmethod
    def backbone_parameter_count(cls, config: ModelConfig) -> int:
        """Per block two LayerNorms, gates, proj, fc1, fc2; the final LayerNorm."""
        d = config.d_model
        block = 2 * 2 * d + (d + 1) * 2 * d + (d + 1) * d + (d + 1) * 4 * d + (4 * d + 1) * d
        return config.n_layers * block + 2 * d

    def build_backbone(self, config: ModelConfig) -> None:
        """``n_layers`` minGRU blocks, a final LayerNorm (no position embeddings: the recurrence
        knows the order)."""
        d = config.d_model
        self.blocks = nn.ModuleList(MinGRUBlock(d, config.dropout) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(d)

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        """Contextualise embedded inputs ``(batch, time, d)``; position t sees only <= t."""
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)
