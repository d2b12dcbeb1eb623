"""The causal Transformer backbone: pre-norm blocks of causal self-attention from plain
``nn.Linear`` layers (per-sample-gradient safe), after learned position embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqanom_core.config import ModelConfig
from seqanom_core.errors import ConfigError
from seqanom_core.models.network import NextEventModel
from seqanom_core.models.registry import register_backbone


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention from plain ``nn.Linear`` layers (per-sample-gradient safe)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, time, d)`` -> ``(batch, time, d)``."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        shape = (b, t, self.n_heads, d // self.n_heads)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class TransformerBlock(nn.Module):
    """Pre-norm Transformer block."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.fc2 = nn.Linear(4 * d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, time, d)`` -> ``(batch, time, d)``."""
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


@register_backbone("transformer")
class TransformerNextEventModel(NextEventModel):
    """Next-event network on a causal Transformer."""

    title = "Causal Transformer"
    detector_name = "TransformerDetector"

    @classmethod
    def check_config(cls, config: ModelConfig) -> None:
        """The heads must split ``d_model``."""
        if config.d_model % config.n_heads:
            raise ConfigError(f"d_model={config.d_model} is not divisible by "
                              f"n_heads={config.n_heads}")

    @classmethod
    def backbone_parameter_count(cls, config: ModelConfig) -> int:
        """Position embeddings, per block two LayerNorms, qkv, proj, fc1, fc2; the final LayerNorm."""
        d = config.d_model
        block = 2 * 2 * d + (d + 1) * 3 * d + (d + 1) * d + (d + 1) * 4 * d + (4 * d + 1) * d
        return config.max_len * d + config.n_layers * block + 2 * d

    def build_backbone(self, config: ModelConfig) -> None:
        """Position embeddings, ``n_layers`` blocks, a final LayerNorm."""
        d = config.d_model
        self.pos = nn.Embedding(config.max_len, d)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, config.n_heads, config.dropout) for _ in range(config.n_layers)
        )
        self.ln_f = nn.LayerNorm(d)

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        """Contextualise embedded inputs ``(batch, time, d)``; position t sees only <= t."""
        b, t = x.shape[:2]
        # positions expanded to (batch, time) so that per-sample gradients see the batch dim
        x = x + self.pos(torch.arange(t, device=x.device).expand(b, t))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)
