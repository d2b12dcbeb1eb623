"""The DP-LSTM backbone: Opacus' ``DPLSTM`` (an LSTM from per-sample-gradient-safe layers)."""

from __future__ import annotations

import torch
from torch import nn

from seqanom_core.config import ModelConfig
from seqanom_core.models.network import NextEventModel
from seqanom_core.models.registry import register_backbone


@register_backbone("lstm")
class LSTMNextEventModel(NextEventModel):
    """Next-event network on a DP-LSTM."""

    title = "DP-LSTM"
    detector_name = "LSTMDetector"

    @classmethod
    def backbone_parameter_count(cls, config: ModelConfig) -> int:
        """Per layer the input and hidden weights of 4 gates with their biases; the LayerNorm."""
        d = config.d_model
        return config.n_layers * 4 * (2 * d * d + 2 * d) + 2 * d

    def build_backbone(self, config: ModelConfig) -> None:
        """``n_layers`` DPLSTM layers, a final LayerNorm."""
        from opacus.layers import DPLSTM  # imported here: only the LSTM needs opacus

        d = config.d_model
        self.lstm = DPLSTM(d, d, num_layers=config.n_layers, batch_first=True,
                           dropout=config.dropout if config.n_layers > 1 else 0.0)
        self.ln_f = nn.LayerNorm(d)

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        """Contextualise embedded inputs ``(batch, time, d)``; position t sees only <= t."""
        out, _ = self.lstm(x)
        return self.ln_f(out)
